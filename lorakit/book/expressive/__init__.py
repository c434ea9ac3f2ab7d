"""The expressive power of LoRA (Part III, Chapters 4–6): Zeng & Lee (2024), re-implemented.

* :mod:`~lorakit.book.expressive.construct` — the linear construction (SVD, rank split, telescoping);
* :mod:`~lorakit.book.expressive.models` — target/frozen FNN and transformer generators, pretraining;
* :mod:`~lorakit.book.expressive.methods` — 'ours' for FNN and TFN, trained LoRA ('sgd'), final layers ('flt');
* :mod:`~lorakit.book.expressive.experiment` — one run of the paper's ``run_exp.py``, the grid;
* :mod:`~lorakit.book.expressive.cli` — ``python -m lorakit.book.expressive``.
"""

from .construct import canonical_svd, chain_product, lowrank_update, rank_threshold, tail_errors
from .experiment import Config, Result, format_mse, format_report, format_settings, grid, run_experiment, run_grid, summarize, validate
from .methods import adapt_ours_fnn, adapt_ours_tfn, mse, train_adapter, trainable_parameters
from .models import FNN, TFN, block_sizes, make_fnn_pair, make_tfn_pair, pretrain, sample_inputs

__all__ = [
    "canonical_svd", "chain_product", "lowrank_update", "rank_threshold", "tail_errors",
    "Config", "Result", "format_mse", "format_report", "format_settings", "grid", "run_experiment", "run_grid", "summarize", "validate",
    "adapt_ours_fnn", "adapt_ours_tfn", "mse", "train_adapter", "trainable_parameters",
    "FNN", "TFN", "block_sizes", "make_fnn_pair", "make_tfn_pair", "pretrain", "sample_inputs",
]
