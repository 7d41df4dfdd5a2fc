"""``python -m allam_jax.model ...`` is ``allam info ...``."""

import sys

from allam_jax.cli import main

sys.exit(main(["info", *sys.argv[1:]]))
