"""Adapters: the store and the payment processors behind the ports."""
