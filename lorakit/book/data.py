"""FashionMNIST without torchvision: find, verify and parse the four gzip IDX files (Chapters 2, 3 and 7–12).

FashionMNIST (Xiao, Rasul and Vollgraf, 2017) is 70,000 grey 28×28 images of clothing in 10
classes, 6,000 per class in the training split and 1,000 per class in the test split.
It ships as four gzip-compressed IDX files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``).

Where the files are looked for, in this order:

1. the directory named by the environment variable ``LORAKIT_DATA``;
2. Debian's ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``);
3. the user cache, ``$XDG_CACHE_HOME/lorakit/fashion-mnist`` (default
   ``~/.cache/lorakit/fashion-mnist``).

The first directory that holds both files of the requested split is used. If none
does, the files are downloaded from ``LORAKIT_DOWNLOAD_BASE`` (default: the upstream
Zalando URL) into the user cache; each file is verified before it is renamed into
place, so the cache never holds a partial file. Offline, the error says how to get
the files.

**What is verified.** Debian re-compressed the files, so their ``.gz`` bytes (and
SHA-256) differ from the upstream download, while the decompressed IDX bytes are
identical. We therefore check the SHA-256 of the *decompressed* bytes
(:data:`SHA256_DECOMPRESSED`), which holds for both sources. Every file is also
parsed strictly: wrong magic number, wrong sizes, or a truncated gzip stream raise
``ValueError`` — never a silently short data set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..io import atomic_write

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FILES",
    "SHA256_DECOMPRESSED",
    "DEFAULT_DOWNLOAD_BASE",
    "SYSTEM_DIRS",
    "search_dirs",
    "user_cache_dir",
    "load_fashion_mnist",
]

Split = Literal["train", "test"]

#: The 10 class names, index = label (Chapter 2).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The (images, labels) file names of each split (Chapter 2).
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 of each file's decompressed bytes (the same for the upstream and Debian files) (Chapter 2).
SHA256_DECOMPRESSED: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_EXPECTED_COUNT = {"train": 60000, "test": 10000}

#: Upstream location of the files (Zalando Research); ``LORAKIT_DOWNLOAD_BASE`` overrides it (Chapter 2).
DEFAULT_DOWNLOAD_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: System-wide directories searched after ``$LORAKIT_DATA`` (Chapter 2).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lorakit/fashion-mnist``, or ``~/.cache/lorakit/fashion-mnist`` (Chapter 2).

    Example:
        >>> user_cache_dir().parts[-2:]
        ('lorakit', 'fashion-mnist')
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorakit" / "fashion-mnist"


def search_dirs() -> list[Path]:
    """The directories searched for the files, in order (see the module docstring) (Chapter 2).

    Example:
        >>> search_dirs()[-1] == user_cache_dir()
        True
    """
    dirs = []
    if os.environ.get("LORAKIT_DATA"):
        dirs.append(Path(os.environ["LORAKIT_DATA"]).expanduser())
    return dirs + list(SYSTEM_DIRS) + [user_cache_dir()]


def _decompress(raw: bytes, source: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(
            f"{source} is truncated or not a valid gzip file ({error}); "
            f"delete it and get it again (the cache copy is re-downloaded automatically)"
        ) from None


def _check_sha256(data: bytes, name: str, source: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256_DECOMPRESSED[name]:
        raise ValueError(
            f"{source}: SHA-256 of the decompressed bytes is {digest}, expected {SHA256_DECOMPRESSED[name]}; "
            "the file is corrupt or not the FashionMNIST file: delete it and get it again"
        )


def _parse_idx(data: bytes, name: str, source: str) -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array, checking magic and sizes."""
    is_images = "images" in name
    magic, ndim = (2051, 3) if is_images else (2049, 1)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{source} has IDX magic number {found}, expected {magic}: not a FashionMNIST {name} file")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(data) != header + size:
        raise ValueError(
            f"{source} is truncated or corrupt: its header promises {dims} = {size} values "
            f"but it holds {len(data) - header}; delete it and get it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_file(path: Path) -> np.ndarray:
    data = _decompress(path.read_bytes(), str(path))
    # Size and magic first: they give the most specific message for a truncated file.
    array = _parse_idx(data, path.name, str(path))
    _check_sha256(data, path.name, str(path))
    return array


def _download(name: str, base: str, cache: Path) -> Path:
    """Fetch ``base + name`` into ``cache`` atomically, verifying it first."""
    url = base.rstrip("/") + "/" + name
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (the URL is the user's choice)
        raw = response.read()
    data = _decompress(raw, url)
    _parse_idx(data, name, url)
    _check_sha256(data, name, url)
    cache.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(raw)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data file should be readable like any other

    return atomic_write(cache / name, write)


def _missing_message(split: str, dirs: list[Path], reason: str) -> str:
    names = ", ".join(FILES[split])
    return (
        f"FashionMNIST {split} files ({names}) were not found in any of: {', '.join(map(str, dirs))}; "
        f"and downloading them failed ({reason}). To get them, do one of:\n"
        "  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist;\n"
        f"  * download the four .gz files from {DEFAULT_DOWNLOAD_BASE} into {user_cache_dir()} "
        "(or any directory, then set LORAKIT_DATA to it);\n"
        "  * set LORAKIT_DOWNLOAD_BASE to a mirror that serves the four files, and call again online."
    )


def _locate(split: str, download: bool) -> tuple[Path, Path]:
    dirs = search_dirs()
    for directory in dirs:
        paths = tuple(directory / name for name in FILES[split])
        if all(path.is_file() for path in paths):
            return paths  # type: ignore[return-value]
    if not download:
        raise FileNotFoundError(_missing_message(split, dirs, "download=False"))
    base = os.environ.get("LORAKIT_DOWNLOAD_BASE") or DEFAULT_DOWNLOAD_BASE
    cache = user_cache_dir()
    try:
        paths = tuple(
            cache / name if (cache / name).is_file() else _download(name, base, cache) for name in FILES[split]
        )
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise FileNotFoundError(_missing_message(split, dirs, f"{base}: {error}")) from None
    return paths  # type: ignore[return-value]


@lru_cache(maxsize=4)
def _load_arrays(images: Path, labels: Path, mtimes: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return _read_file(images), _read_file(labels)


def load_fashion_mnist(split: Split, *, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one FashionMNIST split as tensors ready for training (Chapter 2).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        download: if no directory holds the files, download them into the user
            cache (``False`` raises instead).

    Returns:
        ``(X, y)``: ``X`` float32 of shape ``(N, 784)`` with pixels scaled to ``[0, 1]``
        (row-major 28×28), ``y`` int64 of shape ``(N,)`` with labels ``0..9``
        (names in :data:`FASHION_MNIST_CLASSES`). Fresh tensors on every call.

    Raises:
        ValueError: ``split`` is unknown, or a file is truncated or corrupt.
        FileNotFoundError: the files are nowhere and cannot be downloaded; the
            message says how to get them.

    Example:
        >>> X, y = load_fashion_mnist("test")
        >>> X.shape, X.dtype, y.shape, y.dtype
        (torch.Size([10000, 784]), torch.float32, torch.Size([10000]), torch.int64)
        >>> float(X.min()), float(X.max())
        (0.0, 1.0)
    """
    if split not in FILES:
        raise ValueError(f"split={split!r} is unknown: use 'train' or 'test'")
    images_path, labels_path = _locate(split, download)
    mtimes = (images_path.stat().st_mtime, labels_path.stat().st_mtime)
    images, labels = _load_arrays(images_path, labels_path, mtimes)
    n = _EXPECTED_COUNT[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,):
        raise ValueError(
            f"the {split} files hold images {images.shape} and labels {labels.shape}, "
            f"expected ({n}, 28, 28) and ({n},): are the train and test files swapped?"
        )
    X = torch.from_numpy(images.reshape(n, 784).astype(np.float32)) / 255.0
    y = torch.from_numpy(labels.astype(np.int64))
    return X, y
