"""billing: a gRPC billing service for payments and subscriptions."""

__version__ = "0.1.0"
