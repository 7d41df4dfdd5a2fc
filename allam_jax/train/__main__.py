"""``python -m allam_jax.train ...`` is ``allam train ...``."""

import sys

from allam_jax.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
