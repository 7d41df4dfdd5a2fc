import sys

from allam_jax.cli import main

sys.exit(main())
