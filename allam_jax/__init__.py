"""allam-jax: train Arabic-English LLMs the ALLaM way in JAX/Flax."""

__version__ = "0.1.0"
