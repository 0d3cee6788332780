"""The three references, all in float64: the closed form, JAX autodiff, finite differences."""
