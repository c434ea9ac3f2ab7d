"""Entry point: ``python -m lorakit.book.expressive --help``."""

import sys

from .cli import main

sys.exit(main())
