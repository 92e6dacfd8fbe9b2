"""Hand-written helpers for callers of the billing service (the generated code is in ``billing``).

- :mod:`billing_client.events`: ``EventWatch``, a ``WatchEvents`` stream that reconnects
  and resumes after its last cursor by itself.
- :mod:`billing_client.push`: verify and parse the events the service POSTs to a push
  endpoint (``Billing-Signature`` header).
"""
