"""DownstreamHead (a head on fixed feature vectors) has nothing for FSDP2 to shard: it is refused in one line, with its
own reason, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from module_cases import ROOT, case_args

from core.errors import ConfigError
from core.strategies import FSDP2Strategy, check_sharding
from lightning_modules.prefix.heads import DownstreamHead
from train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_check_sharding_refuses_downstream_head_with_its_reason() -> None:
    assert DownstreamHead.supports_sharding is False and DownstreamHead.sharding_refusal
    with pytest.raises(ConfigError) as info:
        check_sharding(DownstreamHead(input_dim=6, num_labels=2), FSDP2Strategy())
    message = str(info.value)
    assert DownstreamHead.sharding_refusal in message and message.startswith("DownstreamHead cannot be trained sharded")
    assert "\n" not in message


def test_fit_under_fsdp2_exits_2_with_one_line_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    root = tmp_path / "run"
    args = case_args("downstream", tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", *args, "--config", str(ROOT / "configs/trainer/fsdp_cpu.yaml"), "--trainer.max_steps", "1",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(root)])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: DownstreamHead cannot be trained sharded: {DownstreamHead.sharding_refusal}; "
                      "use ddp (configs/trainer/ddp.yaml)"]
    assert not (root / "checkpoints").exists() and not list(tmp_path.rglob("*.ckpt"))  # nothing trained or written
