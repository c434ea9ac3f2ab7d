"""Check, before nbval, that a notebook kernel runs with the pinned CPU numerics.

The stored outputs reproduce to the last printed digit only with the kernels that
``scripts/numerics.env`` pins. This starts a kernel exactly as nbval does (the current
environment's Python, ``--nbval-current-env``), asks it what it runs, and

* exits 0 when the kernel runs the pinned code paths;
* exits 1 with one clear message when it does not (e.g. the variables were not exported),
  instead of letting nbval fail dozens of cells with diffs that look like bugs;
* exits 0 with a one-line notice on a machine that cannot honour the pin (not x86-64, or
  no AVX2): there the stored numbers are expected to differ in their last digits.

Usage: python scripts/check_numerics.py [--quiet]
"""

from __future__ import annotations

import json
import platform
import re
import sys
import tempfile
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent / "numerics.env"
PROBE = """
import json, os, torch
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "env": {k: os.environ.get(k) for k in %r},
                  "mkl": torch.backends.mkl.is_available()}))
"""


def pinned() -> dict[str, str]:
    """The variables ``scripts/numerics.env`` exports, in order."""
    found = re.findall(r"^export (\w+)=(\S+)\s*$", ENV_FILE.read_text(), re.M)
    if not found:
        raise SystemExit(f"{ENV_FILE}: no 'export NAME=value' lines found")
    return dict(found)


def host_can_honour_pin() -> tuple[bool, str]:
    """Whether this CPU can run the pinned AVX2 code paths, and a short description of it."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return False, f"this {machine} CPU"
    try:
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        flags = None
    if flags is None:
        return True, "this x86-64 CPU"  # no /proc (macOS): torch's own report decides below
    if "avx2" not in flags.group(1).split():
        return False, "this x86-64 CPU without AVX2"
    widest = "AVX-512" if "avx512f" in flags.group(1).split() else "AVX2"
    return True, f"this x86-64 CPU with {widest}"


def probe_kernel(names: list[str]) -> dict:
    """Start a kernel the way ``pytest --nbval --nbval-current-env`` does and ask it."""
    from jupyter_client.manager import KernelManager
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

    km = KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager(),
                       transport="ipc", ip=str(Path(tempfile.mkdtemp()) / "kernel"))
    km.start_kernel()
    lines: list[str] = []
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)

        def keep(msg: dict) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                lines.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                lines.append(json.dumps({"error": msg["content"]["evalue"]}))

        kc.execute_interactive(PROBE % (names,), output_hook=keep, timeout=120)
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    return json.loads("".join(lines).strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    quiet = "--quiet" in argv
    pins = pinned()
    able, cpu = host_can_honour_pin()
    if not able:
        print(f"numerics: {cpu} cannot run the AVX2 kernels the stored outputs were made with, so "
              "trained numbers may differ from the stored ones in their last digits here; that is "
              "rounding, not a bug (they reproduce exactly on any x86-64 CPU with AVX2).")
        return 0
    report = probe_kernel(list(pins))
    problems = []
    if "error" in report:
        problems.append(f"the kernel could not report its numerics: {report['error']}")
    else:
        for name, value in pins.items():
            if report["env"].get(name) != value:
                problems.append(f"{name} is {report['env'].get(name)!r} in the kernel, expected {value!r}")
        want = pins.get("ATEN_CPU_CAPABILITY", "").upper()
        if want and report["capability"] != want:
            problems.append(f"torch runs its {report['capability']} kernels, expected {want}")
    if problems:
        print("numerics: a notebook kernel would run WITHOUT the pinned CPU numerics, so nbval would "
              "report trained numbers that differ in their last digits — not bugs:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"  Fix: run through make (it exports {ENV_FILE.relative_to(ENV_FILE.parents[1])}), or "
              f"`set -a; source {ENV_FILE.relative_to(ENV_FILE.parents[1])}; set +a` first.",
              file=sys.stderr)
        return 1
    if not quiet:
        print(f"numerics: pinned ({', '.join(f'{k}={v}' for k, v in pins.items())}) on {cpu}; "
              f"the notebook kernel runs torch's {report['capability']} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
