"""Entry point: ``python -m lorakit.expressive --help``."""

import sys

from .cli import main

sys.exit(main())
