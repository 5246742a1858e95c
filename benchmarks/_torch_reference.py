"""What the benchmarks that time phyjax against a PyTorch reference share.

PyTorch is never a phyjax dependency: its half of a benchmark runs in a separate interpreter
(``/work/torchvenv`` by default; make one with ``python3 -m venv /work/torchvenv &&
/work/torchvenv/bin/pip install torch numpy``), started as ``<script> --torch-only ...``, which
prints its timings as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TORCH = "/work/torchvenv/bin/python"


def median(xs):
    """The middle element (the upper one of an even count), as the timings have always used."""
    xs = sorted(xs)
    return xs[len(xs) // 2]


def torch_side(torch_python: str, script: str, passthrough: list[str]) -> dict:
    """Run ``script --torch-only *passthrough`` in ``torch_python`` and return its last output
    line as JSON; exits with the interpreter's error output when it fails."""
    done = subprocess.run([torch_python, script, "--torch-only", *passthrough],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"PyTorch side failed ({torch_python}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def head_commit() -> str:
    """Short hash of the checked-out commit ('' outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, cwd=ROOT).stdout.strip()


def write_results(out: str, result: dict, markdown: str) -> None:
    """``<out>.json`` and ``<out>.md``, and the markdown on stdout."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
