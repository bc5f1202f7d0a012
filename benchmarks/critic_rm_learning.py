"""Critic-RM against the plain reward model at equal steps, on the offline default (held-out accuracy, not speed).

Both are the same module (``use_critiques`` on or off) trained with the same data order, steps and optimiser on
``data/critic/train.jsonl``; held-out accuracy on ``data/critic/val.jsonl`` is measured the inference way: the
joint model writes its own critique(s) and scores them (greedy with m = 1, sampled at temperature 0.8 with m > 1),
the plain model scores (prompt, response) directly.

    python benchmarks/critic_rm_learning.py --epochs 2 4 8 --seeds 0 1 --m 1 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.reward import RewardDataModule  # noqa: E402
from lightning_modules.critic_rm.metrics import PairwiseAccuracy  # noqa: E402
from lightning_modules.critic_rm.module import CriticRM  # noqa: E402


def train(use_critiques: bool, epochs: int, seed: int) -> tuple[CriticRM, RewardDataModule, int]:
    seed_everything(seed)
    model = CriticRM(use_critiques=use_critiques, max_critique_tokens=32, warmup_steps=10, init_seed=seed)
    dm = RewardDataModule(train_files=str(REPO / "data/critic/train.jsonl"),
                          val_files=str(REPO / "data/critic/val.jsonl"), batch_size=16, max_length=160,
                          max_prompt_length=64, max_critique_length=48, seed=seed)
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, dm)
    return model, dm, trainer.global_step


@torch.no_grad()
def accuracy(model: CriticRM, dm: RewardDataModule, m: int) -> float:
    model.eval()
    model.hparams.num_critiques, model.hparams.critique_temperature = m, (0.8 if m > 1 else 0.0)
    metric = PairwiseAccuracy()
    for i, batch in enumerate(dm.val_dataloader()):
        r = model.score_requests(batch["requests"], seed=i)[0].mean(-1)  # (2B,)
        b = r.shape[0] // 2
        metric.update(r[:b], r[b:])
    return metric.compute().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 4], help="critiques per response at evaluation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| epochs | steps | seed | plain RM | " + " | ".join(f"Critic-RM m={m}" for m in args.m) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(args.m))
    for epochs in args.epochs:
        for seed in args.seeds:
            plain, dm, steps = train(False, epochs, seed)
            row = [accuracy(plain, dm, 1)]
            joint, dm, joint_steps = train(True, epochs, seed)
            assert joint_steps == steps
            row += [accuracy(joint, dm, m) for m in args.m]
            print(f"| {epochs} | {steps} | {seed} | " + " | ".join(f"{a:.3f}" for a in row) + " |", flush=True)


if __name__ == "__main__":
    main()
