"""allam-jax: train Arabic-English LLMs the ALLaM way in JAX/Flax."""

from allam_jax.core import quiet_startup
from allam_jax.core.platform import quiet_absent_tpu

quiet_absent_tpu()
quiet_startup.install()

__version__ = "0.1.0"
