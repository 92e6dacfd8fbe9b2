"""MongoDB adapter: the ``BillingStore`` over PyMongo's async API, its codecs and indexes.

``embedded`` starts the embedded MongoDB-wire server (SecantusDB) as a child process for
tests and local runs; it is never imported implicitly.
"""

from billing_service.adapters.mongo.store import MongoBillingStore

__all__ = ["MongoBillingStore"]
