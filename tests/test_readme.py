"""The README's Python examples run as pasted (offline, on the embedded model).

A block whose first line is ``# after: ria-prune ...`` needs that command's output first: the
test runs it (through ``ria_kernels.cli.main``, with ``--quiet``, a short calibration and the
permutation's fast path ``--no-lsa`` added to stay fast) in the same working directory."""
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_pasted(index, tmp_path, monkeypatch, capsys):
    from ria_kernels import embedded
    try:
        embedded.embedded_text_path("calib")
    except Exception as exc:  # assets are another issue's; absent -> nothing to test
        pytest.skip(f"embedded assets unavailable: {exc}")
    block = python_blocks()[index]
    monkeypatch.chdir(tmp_path)
    first = block.splitlines()[0]
    if first.startswith("# after: ria-prune"):
        from ria_kernels.cli import main
        argv = shlex.split(first.removeprefix("# after: ria-prune"))
        fast = ["--quiet", "--nsamples", "2", "--device", "cpu"] + (["--no-lsa"] if "--permute" in argv else [])
        assert main(argv + fast) == 0
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    if "report" in namespace and hasattr(namespace["report"], "actual_sparsity"):
        assert namespace["report"].actual_sparsity == pytest.approx(0.5)
    if "keep" in namespace:
        keep = namespace["keep"]
        assert keep.dtype.is_floating_point is False and int(keep.sum()) == keep.numel() // 2
    if "model" in namespace and index > 0:
        from ria_kernels.sparse_linear import SparseLinear
        assert any(isinstance(m, SparseLinear) for m in namespace["model"].modules())
