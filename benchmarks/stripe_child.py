"""The Stripe API imitation (``tests/imitations/stripe_api.py``) as a child process.

    python -m benchmarks.stripe_child --api-key sk_test_...

Prints ``READY <base_url>`` once serving and stops on SIGTERM. A process of its own, so its
CPU is measured apart from the load generator's (``imitation`` in the cores-used column).
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.imitations.stripe_api import StripeImitation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api = StripeImitation(api_key=args.api_key).start()
    print(f"READY {api.base_url}", flush=True)
    try:
        while not stop.wait(1.0):
            # The request log only grows; nothing here reads it.
            api.requests.clear()
    finally:
        api.stop()


if __name__ == "__main__":
    main()
