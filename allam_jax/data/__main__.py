"""``python -m allam_jax.data ...`` is ``allam data ...``."""

import sys

from allam_jax.cli import main

sys.exit(main(["data", *sys.argv[1:]]))
