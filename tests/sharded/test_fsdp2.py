"""FSDP2 on two CPU processes (gloo) through ``train.py`` for every objective that trains a transformer
(``configs/trainer/fsdp_cpu.yaml``, the ``fsdp`` preset's CPU variant).

For each module of ``tests/module_cases.py`` one sharded run trains 3 steps (a checkpoint after step 2 and at the end)
and a second resumes from step 2 to step 3. Checked:

- the weights are sharded: each rank holds a part of every decoder/encoder layer's parameters (a probe callback
  reads the DTensors on both ranks), the two parts adding up to the whole;
- each step's loss, and the weights after 3 steps, equal a one-process run on the same global batch (twice the
  per-rank batch), to float tolerance;
- resume is exact: parameters and optimizer state after resuming equal the uninterrupted sharded run's bit for bit;
- DPO also clips gradients (by the global norm over shards, as one process does), generates samples with all ranks
  in lockstep, skips IFEval with one warning, and counts every rank's tokens;
- the causal LMs (DPO, SFT, Critic-RM) export from the sharded checkpoint to a Hugging Face folder whose logits equal
  the trained weights'.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from module_cases import CASES, ROOT, case_args, flat
from safetensors.torch import load_file

from core.checkpointing import read_checkpoint, read_distributed_state
from core.io import jsonl_text
from lightning_modules.prefix.module import ENCODER
from pipelines.instruction_following.synth import synthesize
from train import main

LAUNCH = Path(__file__).with_name("launch.py")
STEPS, STOP = 3, 2
RUN = [
    "--trainer.max_steps", str(STEPS), "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0", "--trainer.deterministic", "true", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
]
# DPO's other reference modes: the adapter (LoRA policy; only the adapter is saved) and precomputed log-probs (the
# reference pass runs through the sharded policy before training; the resumed run misses the cache on purpose and
# rebuilds the reference).
MODES = {"dpo_lora": ["--model.lora_r", "8"], "dpo_precomputed": ["--model.reference", "precomputed"]}
SHARDED = [*(name for name in CASES if name != "downstream"), *MODES]
# The teacher's ResNet (batch norm after every convolution, 48-pixel images) has many convolution weights whose
# gradients are near Adam's eps after three steps: 0.17% of the weights, all within the bound, differ (measured).
ADAM_NOISE = {"multimodal_teacher": 1e-2}
EXPORTED = {"dpo": "DPO", "dpo_lora": "DPO", "sft": "SFT", "critic_rm": "CriticRM"}

pytestmark = pytest.mark.usefixtures("one_thread", "no_dropout")


def batch_size(args: list[str]) -> int:
    return int(args[len(args) - 1 - args[::-1].index("--data.batch_size") + 1])


def callbacks(folder: Path, *more: dict) -> str:
    return json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(folder), "filename": "{step}", "every_n_train_steps": 1,
                                      "save_top_k": -1}}, {"class_path": "shard_probe.ShardProbe"}, *more])


THROUGHPUT = {"class_path": "callbacks.TokenThroughput", "init_args": {"log_every_n_steps": 1}}


def generation_callbacks(prompts: Path) -> list[dict]:
    """Sample generations (all ranks generate in lockstep under FSDP2), IFEval (skipped under sharding, with a
    warning) and the token counter (all ranks counted)."""
    return [{"class_path": "callbacks.SampleGenerations", "init_args": {"every_n_steps": 2, "max_new_tokens": 4,
                                                                        "at_train_end": False}},
            {"class_path": "pipelines.instruction_following.callback.IFEvalCallback",
             "init_args": {"prompts": str(prompts), "every_n_steps": 2}},
            THROUGHPUT]


def logger(folder: Path) -> str:
    return json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder)}})


def sharded_fit(args: list[str], root: Path, *extra: str, more: list[dict] = ()) -> subprocess.CompletedProcess:
    """``train.py fit`` on two processes with the FSDP2 CPU preset; every step checkpointed under ``root/ck``.

    Both ranks are started at once, as ``torchrun`` does (``LOCAL_RANK`` set: Lightning launches nothing itself), so
    they import and build in parallel. Returns rank 0's process."""
    cmd = [sys.executable, str(LAUNCH), "fit", *args, "--config", str(ROOT / "configs/trainer/fsdp_cpu.yaml"), *RUN,
           "--trainer.default_root_dir", str(root), "--trainer.logger", logger(root),
           "--trainer.callbacks", callbacks(root / "ck", *more), *extra]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": "0"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "LOCAL_RANK": str(r), "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, 0, *outs[0])


def losses(root: Path) -> dict[int, float]:
    rows = csv.DictReader(next(root.rglob("metrics.csv")).open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def metric(root: Path, name: str) -> list[float]:
    rows = csv.DictReader(next(root.rglob("metrics.csv")).open())
    return [float(r[name]) for r in rows if r.get(name)]


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_training_matches_one_process_and_resumes_exactly(name: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = case_args(name.split("_")[0] if name in MODES else name, tmp_path) + MODES.get(name, [])
    cache = ["--model.reference_cache_dir", str(tmp_path / "cache")] if name == "dpo_precomputed" else []
    more: list[dict] = []
    if name == "dpo":  # also: gradient clipping over sharded and replicated gradients, as one process clips
        args += ["--trainer.gradient_clip_val", "0.05"]
        prompts = tmp_path / "heldout.jsonl"
        prompts.write_text(jsonl_text(synthesize(4, seed=0, exclude=["language:response_language"])))
        more = generation_callbacks(prompts)
    proc = sharded_fit(args + cache, tmp_path / "full", more=more)
    ck = tmp_path / "full" / "ck"
    final = ck / f"step={STEPS}.ckpt"
    assert final.is_dir() and (final / "__0_0.distcp").is_file() and (final / "__1_0.distcp").is_file()

    # Really sharded: each rank holds a part of every transformer layer's parameters, the two parts make the whole.
    probes = [json.loads((tmp_path / "full" / f"probe{rank}.json").read_text()) for rank in (0, 1)]
    assert probes[0]["sharded"].keys() == probes[1]["sharded"].keys()
    layer_params = [n for n in [*probes[0]["sharded"], *probes[0]["whole"]] if re.search(r"\.layers?\.\d+\.", n)]
    assert layer_params and all(n in probes[0]["sharded"] for n in layer_params), probes[0]["whole"]
    for n, (held, whole) in probes[0]["sharded"].items():
        assert held < whole and held + probes[1]["sharded"][n][0] == whole, n
    # The same global batch on one process: the same losses and (to float tolerance) the same weights.
    one = main(["fit", *args, *RUN, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.default_root_dir", str(tmp_path / "one"), "--trainer.logger", logger(tmp_path / "one"),
                "--trainer.enable_checkpointing", "false",
                "--trainer.callbacks", json.dumps([THROUGHPUT] if more else []),
                "--data.batch_size", str(2 * batch_size(args)),
                *(["--model.reference_cache_dir", str(tmp_path / "cache_one")] if cache else [])])
    sharded_losses, one_losses = losses(tmp_path / "full"), losses(tmp_path / "one")
    assert sorted(sharded_losses) == sorted(one_losses) and len(one_losses) == STEPS
    for step in one_losses:
        assert sharded_losses[step] == pytest.approx(one_losses[step], rel=1e-4, abs=1e-5), (step, name)
    if more:
        samples = [json.loads(x) for x in next((tmp_path / "full").rglob("samples.jsonl")).read_text().splitlines()]
        assert samples and {s["step"] for s in samples} == {2} and all(isinstance(s["completion"], str)
                                                                     for s in samples)
        assert "IFEvalCallback: FSDP2Strategy shards the weights across ranks; skipped" in proc.stderr
        tokens = [metric(tmp_path / run, "throughput/tokens_total")[-1] for run in ("full", "one")]
        assert tokens[0] == tokens[1] > 0  # both ranks' tokens counted
    # Adam turns a gradient near zero into a step of about lr either way, so a few such weights may differ by up to
    # lr per step between two summation orders (a few in a thousand at most); all others agree to float tolerance.
    saved = read_checkpoint(final)["state_dict"]
    own = one.model.state_dict()
    off = {key: int((~torch.isclose(value, own[key], rtol=1e-3, atol=1e-4)).sum()) for key, value in saved.items()}
    for key, value in saved.items():
        assert (value - own[key]).abs().max() < 1e-2 * STEPS, key
    worst = sorted(off.items(), key=lambda kv: -kv[1])[:3]
    assert sum(off.values()) <= ADAM_NOISE.get(name, 1e-3) * sum(v.numel() for v in saved.values()), worst
    if name == "dpo_lora":  # only what trains is saved: the adapter
        assert saved and all("lora_" in k for k in saved), sorted(saved)[:3]
    if name == "prefix":  # only what trains is saved: the prefix and the head, not the frozen (sharded) encoder
        assert saved and not any(k.startswith(ENCODER) for k in saved), sorted(saved)[:3]
    if cache:  # each rank computed half of the reference log-probs: the gathered cache equals one process's
        for split in ("train", "val"):
            mine, theirs = (next((tmp_path / c).glob(f"{split}-*.safetensors")) for c in ("cache", "cache_one"))
            assert mine.name == theirs.name  # same data and weight fingerprints
            torch.testing.assert_close(load_file(mine)["logps"], load_file(theirs)["logps"], rtol=1e-5, atol=1e-5)

    # Resume from step 2: weights and optimizer state equal the uninterrupted run's exactly.
    resume_cache = ["--model.reference_cache_dir", str(tmp_path / "cache_resume")] if cache else []
    sharded_fit(args + resume_cache, tmp_path / "resumed", "--ckpt_path", str(ck / f"step={STOP}.ckpt"))
    resumed = tmp_path / "resumed" / "ck" / f"step={STEPS}.ckpt"
    a, b = flat(read_distributed_state(final)), flat(read_distributed_state(resumed))
    assert a.keys() == b.keys()
    differ = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])
              or not isinstance(a[k], torch.Tensor) and a[k] != b[k]]
    assert not differ, f"{name}: {len(differ)} of {len(a)} entries differ after resuming, e.g. {differ[:3]}"

    if name in EXPORTED:  # a plain Hugging Face folder from the sharded checkpoint, with the trained model's logits
        from transformers import AutoModelForCausalLM

        from core.backbones import unwrap_peft
        from core.checkpointing import load_module
        from pipelines.export import export, exportable_class

        assert export(final, tmp_path / "hf")[0] == EXPORTED[name]
        trained = load_module(exportable_class(EXPORTED[name]), final).eval()
        if name == "dpo_lora":
            trained.policy = trained.policy.merge_and_unload()
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        ids = torch.tensor([[5, 17, 42, 99, 7, 256, 31]])
        with torch.no_grad():
            torch.testing.assert_close(exported(ids).logits, unwrap_peft(trained.policy)(ids).logits)
