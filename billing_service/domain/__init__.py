"""Pure domain core: money, resources, state machines and errors.

Nothing in this package performs I/O or imports a vendor library.
"""
