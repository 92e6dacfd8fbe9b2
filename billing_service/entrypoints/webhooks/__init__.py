"""The webhook sidecar: verified, deduplicated, leased processing of processor events.

``app`` (HTTP), ``stripe`` / ``paypal`` (signature verification), ``inbox`` (what a
verified delivery becomes), ``worker`` (leased inbox workers), ``handlers`` (the one
event-type table) and ``cli`` (serve, replay, backfill).
"""
