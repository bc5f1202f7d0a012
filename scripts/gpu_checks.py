"""GPU checks that CPU CI cannot run: Critic-RM and DPO on CUDA (bf16), in one short script.

    PYTHONUNBUFFERED=1 python scripts/gpu_checks.py --out results.json

1. Critic-RM: the same weights give the same rewards on CPU and GPU (fp32, teacher-forced); joint training in
   bf16-mixed on the offline default, then RewardBench-format test; scoring throughput plain vs m critiques.
2. DPO: FlexAttention (sparse block mask for packed pairs) trains on CUDA, and its first-step log-probs equal SDPA's.
Uses the Python API (no LightningCLI), so it needs only torch, lightning, transformers and torchmetrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.records import read_records  # noqa: E402
from datamodules.preference import PreferenceDataModule  # noqa: E402
from datamodules.reward import RewardDataModule, collate_reward  # noqa: E402
from lightning_modules.critic_rm.module import CriticRM  # noqa: E402
from lightning_modules.dpo.module import DPO  # noqa: E402
from pipelines.score_rewards import score_rows  # noqa: E402


def trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kwargs)


def critic_rm(results: dict) -> None:
    data = dict(train_files=str(ROOT / "data/critic/train.jsonl"), val_files=str(ROOT / "data/critic/val.jsonl"),
                batch_size=16, max_length=160, max_prompt_length=64, max_critique_length=48)
    # same weights, CPU vs GPU, fp32 teacher-forced rewards
    model = CriticRM(max_critique_tokens=32).eval()
    dm = RewardDataModule(tokenizer="tiny-llama", **data)
    dm.setup()
    batch = collate_reward(dm.datasets["val"][:16], dm.tokenizer.pad_token_id, True)
    with torch.no_grad():
        cpu = model.rewards(model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"]),
                            batch["attention_mask"])
        model.cuda()
        g = {k: v.cuda() for k, v in batch.items() if torch.is_tensor(v)}
        gpu = model.rewards(model.hidden_states(g["input_ids"], g["attention_mask"], g["position_ids"]),
                            g["attention_mask"]).cpu()
    results["critic_rm_cpu_gpu_max_abs_diff"] = float((cpu - gpu).abs().max())
    # joint training in bf16-mixed, then the RewardBench-format test
    seed_everything(0)
    model = CriticRM(max_critique_tokens=32, warmup_steps=10)
    t = trainer(max_epochs=8, precision="bf16-mixed", num_sanity_val_steps=0, check_val_every_n_epoch=8)
    start = time.perf_counter()
    t.fit(model, RewardDataModule(**data))
    results["critic_rm_bf16_fit_s"] = time.perf_counter() - start
    results["critic_rm_bf16_val_accuracy"] = float(t.callback_metrics["val/accuracy"])
    results["critic_rm_bf16_val_critique_nll"] = float(t.callback_metrics["val/loss/critique"])
    (test,) = t.test(model, RewardDataModule(test_files=str(ROOT / "data/rewardbench_tiny.jsonl"), batch_size=32),
                     verbose=False)
    results["critic_rm_bf16_test"] = {k: float(v) for k, v in test.items()}
    # scoring throughput on the GPU: plain vs m critiques (trained joint model; fresh plain model)
    rows = read_records(str(ROOT / "data/rewardbench_tiny.jsonl"))
    model = model.cuda().eval()
    plain = CriticRM(use_critiques=False).cuda().eval()
    speed = {}
    for name, m, net in (("plain", 1, plain), ("m=1", 1, model), ("m=4", 4, model)):
        net.hparams.num_critiques, net.hparams.critique_temperature = m, (0.8 if m > 1 else 0.0)
        score_rows(net, rows[:8], batch_size=64)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        scored = score_rows(net, rows, batch_size=64)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        acc = sum(r["chosen_reward"] > r["rejected_reward"] for r in scored) / len(scored)
        speed[name] = {"pairs_per_s": len(rows) / seconds, "accuracy": acc}
    results["critic_rm_gpu_scoring"] = speed


def dpo_flex(results: dict) -> None:
    dm = PreferenceDataModule(train_files=str(ROOT / "data/tiny/train.jsonl"),
                              val_files=str(ROOT / "data/tiny/val.jsonl"), tokenizer="tiny-llama", batch_size=16,
                              max_length=128, max_prompt_length=64)
    dm.setup()
    from datamodules.preference import collate

    batch = collate([dm.datasets["train"][i] for i in range(16)], dm.tokenizer.pad_token_id, True, 1)
    gpu_batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}
    sdpa = DPO(attention="sdpa", reference="copy").cuda()
    flex = DPO(attention="flex_attention", reference="copy").cuda()
    flex.policy.load_state_dict(sdpa.policy.state_dict())
    with torch.no_grad():
        a = sdpa.sequence_logps(sdpa.policy, dict(gpu_batch))
        b = flex.sequence_logps(flex.policy, dict(gpu_batch))
    results["dpo_flex_vs_sdpa_max_abs_logp_diff"] = float((a["chosen"] - b["chosen"]).abs().max())
    seed_everything(0)
    t = trainer(max_steps=30, precision="bf16-mixed", limit_val_batches=2, val_check_interval=30)
    start = time.perf_counter()
    t.fit(DPO(attention="flex_attention", reference="copy", lr=1e-3), dm)
    results["dpo_flex_bf16_30_steps_s"] = time.perf_counter() - start
    results["dpo_flex_bf16_val_accuracy"] = float(t.callback_metrics["val/rewards/accuracies"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_checks.json"))
    args = parser.parse_args()
    import transformers

    results: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                     "device": torch.cuda.get_device_name(0)}
    for check in (critic_rm, dpo_flex):
        try:
            check(results)
        except Exception as err:  # noqa: BLE001 - report every check, not just the first failure
            results[f"{check.__name__}_error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(results, indent=2), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
