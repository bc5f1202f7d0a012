"""Shipped configs keep their checkpoints under ``--trainer.default_root_dir`` (no fixed checkpoint folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from train import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_checkpoints_follow_default_root_dir(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the configs' data paths are relative to the repository
    cli = main(["--config", f"configs/{name}", "--trainer.default_root_dir", str(tmp_path)], run=False)
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoints, f"{name} saves no checkpoint"
    for callback in checkpoints:
        # None: Lightning puts them under the run's own folder, <default_root_dir>/<logger>/version_N/checkpoints
        assert callback.dirpath is None, f"{name} writes checkpoints to the fixed folder {callback.dirpath}"


@pytest.mark.parametrize(("old", "new", "key"), [("    lr: 0.001", "    lrr: 0.001", "lrr"),
                                                 ("  max_epochs: 8", "  max_epoch: 8", "trainer.max_epoch")])
def test_a_misspelt_key_is_named_with_its_file_and_line_first(old: str, new: str, key: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    text = (ROOT / "configs/critic_rm.yaml").read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new))
    line = text.splitlines().index(old) + 1
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"error: {bad}:{line}: unknown key {key!r} (misspelt?); details below"
