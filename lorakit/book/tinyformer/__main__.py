"""``python -m lorakit.book.tinyformer``: pretrain the Part IV TinyViT and write its weights (Chapter 7)."""

from .task import main

main()
