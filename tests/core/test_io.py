"""Atomic writes: a failed write leaves the previous file or folder untouched and no temporary behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_folder_swap(tmp_path: Path) -> None:
    target = tmp_path / "model"
    for content in ("v1", "v2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "v2"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.mkdir()
        raise OSError("disk full")
    assert (target / "weights").read_text() == "v2" and len(list(tmp_path.iterdir())) == 1
