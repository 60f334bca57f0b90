#!/usr/bin/env python3
"""What ``pip install -e .`` alone gives must work (issue 20): run in a fresh venv holding only
torch and the package's ``install_requires`` (``.ci/run`` makes it), this

1. imports every module of ``ria_kernels`` (a top-level import of a package that only an extra
   installs fails here),
2. runs every Python block of README.md as pasted, in a scratch directory; a block whose first
   line is ``# after: ria-prune ...`` first runs that command through the installed ``ria-prune``
   entry point (with ``--quiet``, a short calibration and ``--no-lsa`` for ``--permute``, as
   ``tests/test_readme.py`` does),
3. converts the first block's pruned model to sparse inference and does a ``save_sparse`` /
   ``load_sparse`` round trip (same logits).

Exit status 1 on the first failure (with its traceback), 0 otherwise. Needs no pytest.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def import_everything() -> int:
    import ria_kernels
    names = [info.name for info in pkgutil.walk_packages(ria_kernels.__path__, "ria_kernels.")]
    for name in names:
        importlib.import_module(name)
    return len(names)


def main() -> int:
    t0 = time.perf_counter()
    import ria_kernels
    where = Path(ria_kernels.__file__).resolve()
    if ROOT not in where.parents:
        print(f"check_bare_install: ria_kernels imported from {where}, not from {ROOT}", file=sys.stderr)
        return 1
    print(f"check_bare_install: imported {import_everything()} modules")
    work = Path(tempfile.mkdtemp(prefix="ria-bare-"))
    os.chdir(work)
    cli = Path(sys.executable).with_name("ria-prune")
    first_ns: dict = {}
    for i, block in enumerate(python_blocks()):
        first = block.splitlines()[0]
        if first.startswith("# after: ria-prune"):
            argv = shlex.split(first.removeprefix("# after: ria-prune"))
            fast = ["--quiet", "--nsamples", "2", "--device", "cpu"] + (["--no-lsa"] if "--permute" in argv else [])
            subprocess.run([str(cli), *argv, *fast], check=True)
        ns: dict = {"__name__": "__readme__"}
        exec(compile(block, f"README.md python block {i}", "exec"), ns)  # noqa: S102
        first_ns = first_ns or ns
        print(f"check_bare_install: README python block {i} ran")
    import torch

    import ria_kernels as rk
    model, report = first_ns["model"], first_ns["report"]
    rk.to_sparse_inference(model, report)
    ids = torch.arange(24).reshape(2, 12) % model.config.vocab_size
    with torch.no_grad():
        want = model(ids).logits
        rk.save_sparse(model, work / "sparse", report=report)
        back = rk.load_sparse(work / "sparse")
        got = back(ids).logits
    if not torch.equal(got, want):
        print(f"check_bare_install: load_sparse logits differ by {(got - want).abs().max().item()}", file=sys.stderr)
        return 1
    print(f"check_bare_install: save_sparse/load_sparse round trip identical; passed in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
