"""Entry point: ``python -m lorakit.book.expressive --help`` (Chapters 4–6)."""

import sys

from .cli import main

sys.exit(main())
