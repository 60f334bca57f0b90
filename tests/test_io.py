"""_io: atomic outputs. Here: the durability order of atomic_output_dir / atomic_write_text, i.e.
every written file (and its directory) is fsynced BEFORE the rename that publishes it, and the
parent directory after it (a crash between the two otherwise can leave a complete-looking
directory of empty files)."""
import os

import pytest

from ria_kernels import _io


@pytest.fixture
def calls(monkeypatch):
    """Record ("fsync", path) and ("replace", src, dst) in the order they happen."""
    log = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name fsynced descriptors")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _index(log, entry):
    assert entry in log, f"{entry} not in {log}"
    return log.index(entry)


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_output_dir_fsyncs_everything_before_the_rename(tmp_path, calls, existing):
    target = tmp_path / "out"
    if existing:
        target.mkdir()
        (target / "old.txt").write_text("old")
    with _io.atomic_output_dir(target, overwrite=existing) as tmp:
        tmp_real = os.path.realpath(tmp)
        (tmp / "a.bin").write_bytes(b"1" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.json").write_text("{}")
    publish = _index(calls, ("replace", tmp_real, os.path.realpath(target)))
    for path in (f"{tmp_real}/a.bin", f"{tmp_real}/sub/b.json", f"{tmp_real}/sub", tmp_real):
        assert _index(calls, ("fsync", path)) < publish, f"{path} fsynced after the rename"
    parent = os.path.realpath(tmp_path)
    assert any(c == ("fsync", parent) for c in calls[publish + 1:]), "parent directory not fsynced after the rename"
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "sub"]


def test_atomic_write_text_fsyncs_the_file_before_the_rename(tmp_path, calls):
    target = tmp_path / "report.json"
    _io.atomic_write_text(target, "{}")
    publish = next(i for i, c in enumerate(calls) if c[0] == "replace")
    src = calls[publish][1]
    assert calls[publish][2] == os.path.realpath(target)
    assert ("fsync", src) in calls[:publish]
    assert ("fsync", os.path.realpath(tmp_path)) in calls[publish + 1:]
    assert target.read_text() == "{}"
