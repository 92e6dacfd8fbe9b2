"""The webhook sidecar: verified, deduplicated, leased processing of processor events.

``app`` (HTTP; each processor's adapter verifies its deliveries), ``worker`` (leased
inbox workers), ``handlers`` (the one table from what an event means to its use case) and
``cli`` (serve, replay, backfill). No module here knows a processor by name: verifying,
translating and listing events are verbs of the processor port.
"""
