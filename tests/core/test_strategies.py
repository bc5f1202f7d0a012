"""FSDP2Strategy's parts that need no second process: what it shards, what it refuses, how it writes and reads
checkpoint folders. (Two-process training of every objective: tests/sharded.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from core.checkpointing import read_checkpoint
from core.errors import ConfigError
from core.strategies import FSDP2Strategy, check_sharding, decoder_layer_classes, replace_folder, transformer_networks
from lightning_modules import DPO


def test_the_hf_decoder_layer_is_the_shard_unit_and_every_network_is_found() -> None:
    copy = DPO(backbone="tiny-llama", reference="copy")
    assert decoder_layer_classes(copy) == {LlamaDecoderLayer}
    with pytest.raises(ValueError, match="NoSuchLayer"):
        decoder_layer_classes(copy, ["NoSuchLayer"])
    assert transformer_networks(copy) == [copy.policy]  # the reference copy is held outside the module tree...
    assert copy.unregistered_networks() == [copy.reference.model]  # ...and sharded as well
    lora = DPO(backbone="tiny-llama", lora_r=4)
    assert transformer_networks(lora) == [lora.policy.get_base_model()]  # the HF model under the PEFT wrapper


def test_strategies_the_suite_cannot_run_are_refused_in_one_line() -> None:
    model = DPO(backbone="tiny-llama", reference="precomputed")
    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        with pytest.raises(ConfigError, match=r"is not supported by this suite .* configs/trainer/fsdp.yaml"):
            check_sharding(model, strategy)
    with pytest.raises(ConfigError, match="shards through core.strategies.FSDP2Strategy"):
        check_sharding(model, ModelParallelStrategy())
    check_sharding(model, FSDP2Strategy())  # fine

    class NoTransformer:
        supports_sharding = False
        sharding_refusal = "nothing to shard"

    with pytest.raises(ConfigError, match="NoTransformer cannot be trained sharded: nothing to shard; use ddp"):
        check_sharding(NoTransformer(), FSDP2Strategy())
    with pytest.raises(ConfigError, match="'bfloat17' is no torch dtype"):
        FSDP2Strategy(param_dtype="bfloat17")


def test_a_failed_save_leaves_the_previous_checkpoint_folder_whole(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    last = tmp_path / "last.ckpt"
    last.mkdir()
    (last / "__0_0.distcp").write_text("old")
    (last / "meta.pt").write_text("old")

    def disk_full(self, checkpoint, filepath, storage_options=None):  # one shard written, then the disk is full
        Path(filepath).mkdir(parents=True)
        (Path(filepath) / "__0_0.distcp").write_text("new, half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", disk_full)
    strategy = FSDP2Strategy()
    with pytest.raises(OSError, match="No space left"):
        strategy.save_checkpoint({}, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary folder left behind
    assert {p.name: p.read_text() for p in last.iterdir()} == {"__0_0.distcp": "old", "meta.pt": "old"}

    def complete(self, checkpoint, filepath, storage_options=None):
        Path(filepath).mkdir(parents=True)
        (Path(filepath) / "__0_0.distcp").write_text("new")

    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", complete)
    strategy.save_checkpoint({}, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert {p.name: p.read_text() for p in last.iterdir()} == {"__0_0.distcp": "new"}  # replaced whole


def test_replace_folder_replaces_a_file_too(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("a")
    (tmp_path / "last.ckpt").write_text("a single-file checkpoint")
    replace_folder(tmp_path / "new", tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] and (tmp_path / "last.ckpt" / "a").is_file()


def test_a_folder_that_is_no_distributed_checkpoint_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    with pytest.raises(ConfigError, match=r"ck is a folder but no distributed checkpoint \(no meta.pt"):
        read_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "meta.pt").write_bytes(b"garbage")
    (tmp_path / "ck" / ".metadata").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read .*ck as a distributed checkpoint"):
        read_checkpoint(tmp_path / "ck")


def test_groups_mixing_shards_and_whole_tensors_step_one_tensor_at_a_time(tmp_path: Path) -> None:
    """On a GPU torch's AdamW defaults to its multi-tensor kernels, which refuse a group holding both a sharded
    DTensor and a plain tensor (seen on an H200 for every objective with a replicated head). Forcing those kernels
    reproduces that on the CPU; after :func:`step_mixed_groups_per_tensor` the step runs and equals plain AdamW."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from core.strategies import step_mixed_groups_per_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        body, head = nn.Linear(4, 4), nn.Linear(4, 2)
        ref_body, ref_head = nn.Linear(4, 4), nn.Linear(4, 2)
        ref_body.load_state_dict(body.state_dict())
        ref_head.load_state_dict(head.state_dict())
        fully_shard(body, mesh=init_device_mesh("cpu", (1,)))
        x = torch.randn(3, 4)

        def step(opt: torch.optim.Optimizer, b: nn.Module, h: nn.Module) -> None:
            h(b(x)).square().sum().backward()
            opt.step()

        failing = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=0.1, foreach=True)
        with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
            step(failing, body, head)  # fails before any parameter moves
        failing.zero_grad()
        mixed = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=0.1, foreach=True)
        step_mixed_groups_per_tensor(mixed)
        assert mixed.param_groups[0]["foreach"] is False
        step(mixed, body, head)
        plain = torch.optim.AdamW([*ref_body.parameters(), *ref_head.parameters()], lr=0.1)
        step(plain, ref_body, ref_head)
        torch.testing.assert_close(head.weight, ref_head.weight)
        torch.testing.assert_close(body.weight.full_tensor(), ref_body.weight)
    finally:
        dist.destroy_process_group()
