"""Generated code for billing.v1. Do not edit: run `make gen`."""
