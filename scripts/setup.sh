#!/usr/bin/env bash
# Idempotent setup for the book: system packages, the pinned venv, lorakit, and the vendored JS.
# A second run checks stamps and exits in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
LOCK=requirements/lock.txt
REFERENCES=requirements/references.txt
TORCH_PIN=$(grep -E '^torch==' "$LOCK")
APT_PACKAGES="r-base-core r-base-dev libopenblas0-pthread dataset-fashion-mnist chromium fonts-noto-color-emoji"
say() { printf '[setup] %s\n' "$*"; }

# 1. System packages (Debian/Ubuntu). Elsewhere, say exactly what is needed and stop.
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  cat >&2 <<MSG
[setup] This is not a Debian-based system, so setup cannot install system packages itself.
[setup] Install by hand, then run 'make' again:
[setup]   - R >= 4.2 with headers (for rpy2): e.g. 'brew install r' or your distribution's r-base + r-base-dev
[setup]   - FashionMNIST: the four *.gz files in a folder named by LORAKIT_DATA (lorakit can also download them)
[setup]   - Chromium (for the browser test): any recent chromium/chrome on PATH
[setup] Or use conda: 'conda env create -f environment.yml'.
MSG
  exit 1
fi

# 2. The virtual environment from the lock. torch goes first and alone: an unpinned torch
#    requested by a dependency would pull a multi-GB CUDA build.
stamp="$VENV/.lock-$(sha256sum "$LOCK" "$REFERENCES" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "building $VENV from $LOCK"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_PIN" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$LOCK" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
  # The test-only reference implementations live apart from the venv (why: see $REFERENCES).
  rm -rf "$VENV/reference-packages"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$VENV/reference-packages" \
    -r "$REFERENCES" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import torch, lorakit, rpy2, jupyter_book, nbval" \
    || { say "the venv is incomplete; see the pip output above"; exit 1; }
  rm -f "$VENV"/.lock-*
  touch "$stamp"
fi

# 3. JavaScript the offline site serves itself: MathJax 3 and the Jupyter widget manager.
bash scripts/vendor_js.sh
say "ready"
