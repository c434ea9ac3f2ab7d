"""The Part II fine-tuning task: a pretrained FashionMNIST MLP and a shifted downstream task.

**Pretraining.** The quickstart MLP (784→512→512→10, :func:`lorakit.lowrank.quickstart_mlp`)
is trained on the first :data:`PRETRAIN_N` upright FashionMNIST training images with Adam
(lr 1e-3, batch 128, :data:`PRETRAIN_EPOCHS` epochs, shuffled by a generator seeded with
:data:`PRETRAIN_SEED`, one CPU thread). The weights are stored in
``lorakit/assets/fashion_mlp_pretrained.safetensors`` (2.7 MB, package data, so an installed
wheel has it too). :func:`pretrained_mlp` loads that
file when it is present and otherwise trains and saves it. The command::

    python -m lorakit.transfer --check

retrains from the seed and checks that the result equals the stored file bit for bit
(same torch version and CPU kind); ``--write`` (re)writes the file.

**The downstream task** (:func:`downstream_task`) is the same 10 classes seen *rotated by
90°*: a changed input distribution. It is a fair test of adaptation because

* the labels and the architecture are unchanged, so the frozen model can be scored as is
  and every method adapts the same network;
* the pretrained model does poorly on it (the pixels it learned to look at moved), yet the
  task is as learnable as the original, so full fine-tuning clearly beats the frozen model;
* the shift is at the *input*, so tuning the last layer alone cannot undo it, while
  updates of the early layers can.

Its training images are the last 10,000 training images (never seen in pretraining),
of which :data:`DOWNSTREAM_N_TRAIN` are used; its test set is the full rotated test split.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .data import load_fashion_mnist
from .inject import count_parameters, inject_lora
from .lowrank import accuracy, quickstart_mlp
from .train import History, fit

__all__ = [
    "PRETRAIN_SEED",
    "PRETRAIN_N",
    "PRETRAIN_EPOCHS",
    "DOWNSTREAM_N_TRAIN",
    "LORA_TARGETS",
    "PRETRAINED_PATH",
    "accuracy",
    "rotate",
    "downstream_task",
    "pretrain",
    "pretrained_mlp",
    "save_pretrained",
    "prepare_finetuning",
    "optimizer_state_bytes",
    "finetune",
]

Method = Literal["frozen", "last_layer", "full", "lora"]

#: Seed of the pretraining run (init and shuffling).
PRETRAIN_SEED = 0
#: Pretraining uses the first this-many training images (upright).
PRETRAIN_N = 50_000
#: Passes over the pretraining images.
PRETRAIN_EPOCHS = 3
#: Rotated training images of the downstream task (taken from the last 10,000).
DOWNSTREAM_N_TRAIN = 5_000
#: The layers LoRA adapts in Chapter 3, the two hidden layers (``0`` is 784→512, ``2`` is 512→512).
LORA_TARGETS: tuple[str, ...] = ("0", "2")
#: The pretrained weights, shipped inside the package (``lorakit/assets/``).
PRETRAINED_PATH = Path(__file__).with_name("assets") / "fashion_mlp_pretrained.safetensors"

_RECIPE = f"quickstart-mlp adam lr=1e-3 batch=128 epochs={PRETRAIN_EPOCHS} n={PRETRAIN_N} seed={PRETRAIN_SEED}"


def rotate(X: torch.Tensor, quarter_turns: int = 1) -> torch.Tensor:
    """Rotate flattened 28×28 images by ``quarter_turns`` × 90° (counter-clockwise).

    Shapes:
        ``(N, 784)`` → ``(N, 784)``.

    Example:
        >>> X = torch.arange(784.).reshape(1, 784)
        >>> torch.equal(rotate(rotate(X), 3), X)
        True
    """
    if X.ndim != 2 or X.shape[1] != 784:
        raise ValueError(f"X has shape {tuple(X.shape)}; pass flattened 28x28 images of shape (N, 784)")
    return X.reshape(-1, 28, 28).rot90(quarter_turns, dims=(1, 2)).reshape(-1, 784).contiguous()


def downstream_task(n_train: int = DOWNSTREAM_N_TRAIN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shifted task: FashionMNIST rotated by 90° (see the module docstring).

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
    return rotate(X_train), y_train.clone(), rotate(X_test), y_test


def pretrain(seed: int = PRETRAIN_SEED, epochs: int = PRETRAIN_EPOCHS, progress: bool = True) -> nn.Sequential:
    """Train the quickstart MLP on upright FashionMNIST (the recipe in the module docstring).

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
    """Write ``model``'s state dict to ``path`` (safetensors, atomically); return the path.

    Example:
        >>> import tempfile
        >>> path = save_pretrained(quickstart_mlp(), Path(tempfile.mkdtemp()) / "mlp.safetensors")
        >>> pretrained_mlp(path)[4].weight.shape
        torch.Size([10, 512])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # One metadata key only: safetensors stores metadata in a hash map, so with several keys
        # their order in the file header (and the file's bytes) would change from run to run.
        save_file(tensors, tmp, metadata={"recipe": f"{_RECIPE} torch={torch.__version__}"})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data file should be readable like any other
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def pretrained_mlp(path: str | os.PathLike | None = None, *, progress: bool = True) -> nn.Sequential:
    """The pretrained quickstart MLP: loaded from ``path`` if present, else trained and saved there.

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
    if not path.is_file():
        model = pretrain(progress=progress)
        save_pretrained(model, path)
        return model
    tensors = load_file(str(path))
    model = quickstart_mlp()
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    if expected != found:
        raise ValueError(
            f"{path} holds tensors {found}, but the quickstart MLP needs {expected}; "
            "delete the file to retrain it (python -m lorakit.transfer --write)"
        )
    model.load_state_dict(tensors)
    return model.eval()


def prepare_finetuning(
    model: nn.Module,
    method: Method,
    r: int | None = None,
    alpha: float | None = None,
    targets: Sequence[str] = LORA_TARGETS,
) -> nn.Module:
    """Set which parameters of the pretrained MLP train, in place; return ``model``.

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


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (e.g. Adam's two moments per parameter).

    Example:
        >>> p = nn.Parameter(torch.zeros(10))
        >>> opt = torch.optim.Adam([p]); p.grad = torch.ones(10); opt.step()
        >>> optimizer_state_bytes(opt)   # exp_avg + exp_avg_sq (10 float32 each) + step
        84
    """
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def finetune(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> tuple[History, dict[str, float]]:
    """Train ``model``'s trainable parameters with Adam; score the test accuracy each epoch.

    Returns:
        ``(history, stats)`` where ``history.metric("accuracy")`` is the test accuracy per
        epoch and ``stats`` holds ``"trainable"`` (parameters), ``"optimizer_bytes"`` and
        ``"seconds_per_epoch"`` (CPU time). A model with nothing to train is only scored.

    Example:
        >>> X, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        >>> model = prepare_finetuning(quickstart_mlp(), "last_layer")
        >>> history, stats = finetune(model, X, y, X, y, epochs=1, progress=False)
        >>> stats["trainable"], stats["optimizer_bytes"]
        (5130, 41048)
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    if not trainable:
        return History(evals=[{"epoch": 0, "accuracy": accuracy(model, X_test, y_test)}]), {
            "trainable": 0, "optimizer_bytes": 0, "seconds_per_epoch": 0.0,
        }
    optimizer = torch.optim.Adam(trainable, lr=lr)
    start = time.process_time()
    history = fit(
        model, X, y, loss_fn=F.cross_entropy, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        generator=generator, evaluate=lambda m: {"accuracy": accuracy(m, X_test, y_test)},
        progress=progress, desc=desc,
    )
    seconds = (time.process_time() - start) / epochs
    return history, {"trainable": count, "optimizer_bytes": optimizer_state_bytes(optimizer), "seconds_per_epoch": seconds}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--check`` retrains and compares with the stored file; ``--write`` rewrites it."""
    parser = argparse.ArgumentParser(prog="python -m lorakit.transfer", description="Regenerate the pretrained MLP.")
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
    stored = load_file(str(path))
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
