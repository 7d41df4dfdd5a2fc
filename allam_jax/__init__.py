"""allam-jax: train Arabic-English LLMs the ALLaM way in JAX/Flax."""

import os

# XLA (jaxlib) and TensorFlow share absl's C++ log threshold, read once when the first of them loads: set it
# before either does, or TensorFlow's warnings (a traceback per failed tf.data op) reach the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from allam_jax.core import quiet_startup  # noqa: E402
from allam_jax.core.accelerator_env import quiet_absent_tpu  # noqa: E402

quiet_absent_tpu()
quiet_startup.install()

__version__ = "0.1.0"
