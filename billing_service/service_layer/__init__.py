"""Use cases, ports and the idempotency machinery."""
