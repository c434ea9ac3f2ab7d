"""Tests for lorakit.book.data: the FashionMNIST loader."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.book import data
from lorakit.book.data import FASHION_MNIST_CLASSES, FILES, load_fashion_mnist


_SYSTEM_DIRS = list(data.SYSTEM_DIRS)  # captured before any test patches them


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No LORAKIT_DATA, no system directory, an empty user cache, downloads from an empty folder."""
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "mirror"
    empty.mkdir()
    monkeypatch.setenv("LORAKIT_DOWNLOAD_BASE", empty.as_uri() + "/")
    data._load_arrays.cache_clear()
    yield tmp_path
    data._load_arrays.cache_clear()


def _system_file(name: str) -> Path:
    for directory in _SYSTEM_DIRS:
        if (directory / name).is_file():
            return directory / name
    pytest.skip("FashionMNIST is not installed system-wide (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_shapes_ranges_and_class_counts(split, n):
    X, y = load_fashion_mnist(split)
    assert X.shape == (n, 784) and X.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
    assert len(FASHION_MNIST_CLASSES) == 10


def test_calls_return_fresh_tensors():
    X1, _ = load_fashion_mnist("test")
    X1.zero_()
    X2, _ = load_fashion_mnist("test")
    assert float(X2.max()) == 1.0


def test_unknown_split():
    with pytest.raises(ValueError, match="use 'train' or 'test'"):
        load_fashion_mnist("validation")


def test_missing_data_message_says_how_to_get_the_files(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "LORAKIT_DATA" in message and "LORAKIT_DOWNLOAD_BASE" in message
    assert not (isolated / "cache" / "lorakit" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_download_false_refuses(isolated):
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_fashion_mnist("test", download=False)


def test_lorakit_data_is_searched_first(isolated, monkeypatch):
    folder = isolated / "mine"
    folder.mkdir()
    for name in FILES["test"]:
        shutil.copy(_system_file(name), folder / name)
    monkeypatch.setenv("LORAKIT_DATA", str(folder))
    assert data.search_dirs()[0] == folder
    X, y = load_fashion_mnist("test")
    assert X.shape == (10000, 784) and y.shape == (10000,)


def test_download_verifies_and_caches(isolated, monkeypatch):
    mirror = isolated / "mirror"
    for name in FILES["test"]:
        shutil.copy(_system_file(name), mirror / name)
    X, y = load_fashion_mnist("test")
    cache = isolated / "cache" / "lorakit" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES["test"])  # no temporary files left
    # A second call reads the cache, even with the mirror gone.
    shutil.rmtree(mirror)
    data._load_arrays.cache_clear()
    X2, y2 = load_fashion_mnist("test")
    assert torch.equal(X, X2) and torch.equal(y, y2)


def test_download_with_wrong_checksum_is_refused_and_not_cached(isolated):
    mirror = isolated / "mirror"
    # Right format and size, wrong content: the labels of the test split shifted by one.
    raw = gzip.decompress(_system_file("t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = raw[:8] + bytes((b + 1) % 10 for b in raw[8:])
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bad))
    shutil.copy(_system_file("t10k-images-idx3-ubyte.gz"), mirror / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="SHA-256"):
        load_fashion_mnist("test")
    assert not (isolated / "cache" / "lorakit" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def _local_copy_with(isolated, monkeypatch, name: str, payload: bytes) -> None:
    folder = isolated / "local"
    folder.mkdir()
    for other in FILES["test"]:
        shutil.copy(_system_file(other), folder / other)
    (folder / name).write_bytes(payload)
    monkeypatch.setenv("LORAKIT_DATA", str(folder))


def test_truncated_gzip_gives_a_clear_error(isolated, monkeypatch):
    name = "t10k-images-idx3-ubyte.gz"
    raw = _system_file(name).read_bytes()
    _local_copy_with(isolated, monkeypatch, name, raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or not a valid gzip file"):
        load_fashion_mnist("test")


def test_short_idx_payload_is_never_a_short_dataset(isolated, monkeypatch):
    name = "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(_system_file(name).read_bytes())
    _local_copy_with(isolated, monkeypatch, name, gzip.compress(raw[:-784 * 10]))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_fashion_mnist("test")


def test_corrupt_file_gives_a_clear_error(isolated, monkeypatch):
    name = "t10k-labels-idx1-ubyte.gz"
    _local_copy_with(isolated, monkeypatch, name, b"this is not gzip at all" * 10)
    with pytest.raises(ValueError, match="not a valid gzip"):
        load_fashion_mnist("test")


def test_wrong_magic_number(isolated, monkeypatch):
    name = "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(_system_file(name).read_bytes())
    _local_copy_with(isolated, monkeypatch, name, gzip.compress(b"\x00\x00\x08\x03" + raw[4:]))
    with pytest.raises(ValueError, match="magic number"):
        load_fashion_mnist("test")


def test_flipped_pixel_fails_the_checksum(isolated, monkeypatch):
    name = "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(_system_file(name).read_bytes()))
    raw[5000] ^= 0xFF
    _local_copy_with(isolated, monkeypatch, name, gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="SHA-256"):
        load_fashion_mnist("test")


def test_user_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.user_cache_dir() == tmp_path / "lorakit" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.user_cache_dir() == Path.home() / ".cache" / "lorakit" / "fashion-mnist"
