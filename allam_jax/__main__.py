"""``python -m allam_jax ...`` is ``allam ...``."""

import sys

from allam_jax.launch import main

sys.exit(main())
