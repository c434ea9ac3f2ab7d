"""The book's experiment code: one module per chapter or part of *Understanding LoRA*.

The reusable library (the LoRA layer, injection, adapter I/O, training loop, optimizers, variants)
lives in :mod:`lorakit`; this sub-package holds what the chapters run on it. The library never
imports from here (a test enforces the direction).

* :mod:`lorakit.book.toy` — Chapter 1's minimal example ``y = Xθ``;
* :mod:`lorakit.book.rlang` — Chapter 1's R cells through rpy2;
* :mod:`lorakit.book.data` — FashionMNIST without torchvision (Parts II and IV);
* :mod:`lorakit.book.scaffold` — the one fine-tuning helper, result type, task type, rotation and
  load-or-pretrain the fine-tuning chapters share (Chapters 2, 3, 7–12);
* :mod:`lorakit.book.lowrank` — Chapter 2, low-rank layers instead of full-rank weights;
* :mod:`lorakit.book.transfer` — Chapter 3's pretrained MLP and rotated task (reused by Chapters 10–12);
* :mod:`lorakit.book.expressive` — Chapters 4–6, the expressive power of LoRA (its ``stored``
  module: the paper's full grids as stored results);
* :mod:`lorakit.book.tinyformer` — Chapters 7–9, the tiny ViT (``model``) and its tasks (``task``);
* :mod:`lorakit.book.measure` — Chapter 7's inference cost (FLOPs, latency);
* :mod:`lorakit.book.peft_family_exp` — Chapter 7's tuned, multi-seed PEFT-family comparison;
* :mod:`lorakit.book.compare` — Chapters 11–12's variant recipes and comparison loop;
* :mod:`lorakit.book.family_exp` — Chapter 11's validation-tuned, multi-seed family comparison;
* :mod:`lorakit.book.realtext` — Chapter 13's real-text task (topics of BSD ``fortunes``);
* :mod:`lorakit.book.bench` — Chapter 14's speed benchmark (layer level);
* :mod:`lorakit.book.bench_e2e` — Chapter 14's end-to-end benchmark (a real transformer's step);
* :mod:`lorakit.book.storage` — where the stored full-scale results are (Chapters 2–6);
* :mod:`lorakit.book.text` — :func:`~lorakit.book.text.say`, printed prose wrapped at the site's width.

Nothing is imported here: ``import lorakit.book.transfer`` loads only what it needs.
"""
