"""Payment processor adapters: Stripe, PayPal and the built-in fake, with the same verbs."""
