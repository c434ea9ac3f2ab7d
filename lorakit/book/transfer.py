"""The Part II fine-tuning task (Chapter 3; reused by Chapters 10–12): a pretrained FashionMNIST MLP and a shifted downstream task.

**Pretraining.** The quickstart MLP (784→512→512→10, :func:`lorakit.book.lowrank.quickstart_mlp`)
is trained on the first :data:`PRETRAIN_N` upright FashionMNIST training images with Adam
(lr 1e-3, batch 128, :data:`PRETRAIN_EPOCHS` epochs, shuffled by a generator seeded with
:data:`PRETRAIN_SEED`, one CPU thread). The weights are stored in
``lorakit/book/assets/fashion_mlp_pretrained.safetensors`` (2.7 MB, package data, so an installed
wheel has it too). :func:`pretrained_mlp` loads that
file when it is present and otherwise trains and saves it. The command::

    python -m lorakit.book.transfer --check

retrains from the seed and checks that the result equals the stored file bit for bit
(same torch version and CPU kind); ``--write`` (re)writes the file.

**The downstream task** (:func:`downstream_task`) is the same 10 classes seen *rotated by
90°*: a changed input distribution. It is a fair test of adaptation because

* the labels and the architecture are unchanged, so the frozen model can be scored as is
  and every method adapts the same network;
* the pretrained model does poorly on it (the pixels it learned to look at moved), yet the
  task is as learnable as the original, so full fine-tuning clearly beats the frozen model;
* the shift is at the *input*: tuning the last layer alone cannot move what the hidden layers
  look at, but it can re-read their features of the rotated images, and gets a long way (about
  70 % in Chapter 3's budget); updates of the hidden layers get further.

Its training images are the last 10,000 training images (never seen in pretraining),
of which :data:`DOWNSTREAM_N_TRAIN` are used; its test set is the full rotated test split.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..inject import count_parameters, inject_lora
from ..train import accuracy, fit
from .data import load_fashion_mnist
from .lowrank import quickstart_mlp
from .scaffold import Task, load_or_pretrain, load_weights, rotate, save_weights

__all__ = [
    "PRETRAIN_SEED",
    "PRETRAIN_N",
    "PRETRAIN_EPOCHS",
    "DOWNSTREAM_N_TRAIN",
    "LORA_TARGETS",
    "PRETRAINED_PATH",
    "downstream_task",
    "pretrain",
    "pretrained_mlp",
    "save_pretrained",
    "prepare_finetuning",
]

Method = Literal["frozen", "last_layer", "full", "lora"]

#: Seed of the pretraining run (init and shuffling) (Chapter 3).
PRETRAIN_SEED = 0
#: Pretraining uses the first this-many training images (upright) (Chapter 3).
PRETRAIN_N = 50_000
#: Passes over the pretraining images (Chapter 3).
PRETRAIN_EPOCHS = 3
#: Rotated training images of the downstream task (taken from the last 10,000) (Chapter 3).
DOWNSTREAM_N_TRAIN = 5_000
#: The layers LoRA adapts in Chapter 3, the two hidden layers (``0`` is 784→512, ``2`` is 512→512).
LORA_TARGETS: tuple[str, ...] = ("0", "2")
#: The pretrained weights, shipped inside the package (``lorakit/book/assets/``) (Chapter 3).
PRETRAINED_PATH = Path(__file__).with_name("assets") / "fashion_mlp_pretrained.safetensors"

_FORMAT = "lorakit-fashion-mlp/1"
_RECIPE = f"quickstart-mlp adam lr=1e-3 batch=128 epochs={PRETRAIN_EPOCHS} n={PRETRAIN_N} seed={PRETRAIN_SEED}"


def downstream_task(n_train: int = DOWNSTREAM_N_TRAIN) -> Task:
    """The shifted task: FashionMNIST rotated by 90° (see the module docstring) (Chapter 3).

    Args:
        n_train: training images, from the last 10,000 of the training split (1..10000).

    Returns:
        ``(X_train, y_train, X_test, y_test)``: ``(n_train, 784)``, ``(n_train,)``,
        ``(10000, 784)``, ``(10000,)``; pixels in ``[0, 1]``, int64 labels.

    Example:
        >>> X_train, y_train, X_test, y_test = downstream_task(1000)
        >>> X_train.shape, X_test.shape
        (torch.Size([1000, 784]), torch.Size([10000, 784]))
    """
    pool = 60_000 - PRETRAIN_N
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train <= pool:
        raise ValueError(f"n_train={n_train!r} must be an int in 1..{pool} (the images pretraining never saw)")
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    X_train, y_train = X[PRETRAIN_N : PRETRAIN_N + n_train], y[PRETRAIN_N : PRETRAIN_N + n_train]
    return Task(rotate(X_train), y_train.clone(), rotate(X_test), y_test)


def pretrain(seed: int = PRETRAIN_SEED, epochs: int = PRETRAIN_EPOCHS, progress: bool = True) -> nn.Sequential:
    """Train the quickstart MLP on upright FashionMNIST (the recipe in the module docstring) (Chapter 3).

    Torch's global random state and thread count are restored afterwards, so calling
    this does not change what the caller's code draws next.

    Example:
        >>> model = pretrain(progress=False)   # about 30 s of CPU  # doctest: +SKIP
        >>> accuracy(model, *load_fashion_mnist("test")) > 0.85   # doctest: +SKIP
        True
    """
    X, y = load_fashion_mnist("train")
    X, y = X[:PRETRAIN_N], y[:PRETRAIN_N]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = quickstart_mlp()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            fit(
                model, X, y, loss_fn=F.cross_entropy, optimizer=optimizer, epochs=epochs, batch_size=128,
                generator=torch.Generator().manual_seed(seed), progress=progress, desc="pretraining",
            )
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def save_pretrained(model: nn.Module, path: str | os.PathLike = PRETRAINED_PATH) -> Path:
    """Write ``model``'s state dict and the recipe to ``path`` (safetensors, atomically) (Chapter 3).

    The file has :mod:`lorakit.book.scaffold`'s one metadata format (format ``lorakit-fashion-mlp/1``).

    Example:
        >>> import tempfile
        >>> path = save_pretrained(quickstart_mlp(), Path(tempfile.mkdtemp()) / "mlp.safetensors")
        >>> pretrained_mlp(path)[4].weight.shape
        torch.Size([10, 512])
    """
    return save_weights(model, path, format=_FORMAT, metadata={"recipe": f"{_RECIPE} torch={torch.__version__}"})


def pretrained_mlp(path: str | os.PathLike | None = None, *, progress: bool = True) -> nn.Sequential:
    """The pretrained quickstart MLP: loaded from ``path`` if present, else trained and saved there (Chapter 3).

    Args:
        path: the safetensors file (default :data:`PRETRAINED_PATH`).
        progress: progress bar if it has to train (about 30 s of CPU).

    Returns:
        A fresh ``nn.Sequential`` (784→512→512→10) in eval mode, all parameters trainable.

    Raises:
        ValueError: the file exists but does not hold the quickstart MLP's tensors.

    Example:
        >>> model = pretrained_mlp()
        >>> [tuple(p.shape) for p in model.parameters()][:2]
        [(512, 784), (512,)]
    """
    path = Path(path) if path is not None else PRETRAINED_PATH
    metadata = {"recipe": f"{_RECIPE} torch={torch.__version__}"}
    model, _ = load_or_pretrain(
        path, format=_FORMAT, build=lambda meta: quickstart_mlp(), pretrain=lambda: (pretrain(progress=progress), metadata)
    )
    return model


def prepare_finetuning(
    model: nn.Module,
    method: Method,
    r: int | None = None,
    alpha: float | None = None,
    targets: Sequence[str] = LORA_TARGETS,
) -> nn.Module:
    """Set which parameters of the pretrained MLP train, in place; return ``model`` (Chapter 3).

    * ``"frozen"``: nothing trains;
    * ``"last_layer"``: only the output layer (``"4"``, 512→10, weight and bias);
    * ``"full"``: every parameter;
    * ``"lora"``: rank-``r`` LoRA on ``targets`` (default: both hidden layers), everything
      else frozen; ``alpha`` defaults to ``r`` (scaling 1).

    Example:
        >>> model = prepare_finetuning(quickstart_mlp(), "lora", r=2)
        >>> count_parameters(model).trainable == 2 * (784 + 512) + 2 * (512 + 512)
        True
    """
    if method not in ("frozen", "last_layer", "full", "lora"):
        raise ValueError(f"method={method!r} is unknown: use 'frozen', 'last_layer', 'full' or 'lora'")
    if (method == "lora") != (r is not None):
        raise ValueError("pass a rank r for method='lora', and only for it")
    if method == "lora":
        inject_lora(model, list(targets), r=r, alpha=float(r) if alpha is None else alpha, match="exact")
        return model
    for name, p in model.named_parameters():
        p.requires_grad_(method == "full" or (method == "last_layer" and name.startswith("4.")))
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--check`` retrains and compares with the stored file; ``--write`` rewrites it."""
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.transfer", description="Regenerate the pretrained MLP.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="retrain and compare bit for bit with the stored file")
    group.add_argument("--write", action="store_true", help="retrain and (over)write the stored file")
    parser.add_argument("--path", default=str(PRETRAINED_PATH))
    args = parser.parse_args(argv)
    path = Path(args.path)
    model = pretrain()
    if args.write:
        save_pretrained(model, path)
        print(f"wrote {path} (sha256 {_sha256(path)})")
        return 0
    if not path.is_file():
        print(f"no stored file at {path}; create it with --write")
        return 1
    stored, _ = load_weights(path, format=_FORMAT)
    fresh_tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    tensors_same = stored.keys() == fresh_tensors.keys() and all(
        torch.equal(stored[key], fresh_tensors[key]) for key in stored
    )
    with tempfile.TemporaryDirectory() as tmp:
        fresh = save_pretrained(model, Path(tmp) / path.name)
        bytes_same = fresh.read_bytes() == path.read_bytes()
        print(f"stored {_sha256(path)}\nfresh  {_sha256(fresh)}")
    print(f"tensors: {'identical' if tensors_same else 'DIFFERENT'}; file bytes: {'identical' if bytes_same else 'DIFFERENT'}")
    return 0 if tensors_same and bytes_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
