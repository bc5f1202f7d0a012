"""UNIREX training step: all objectives against task-only training, and the batched k-forward against a loop over k.

What is compared (one training step = ``UNIREX.losses`` + backward + AdamW step, on the same batch)
    task-only     the task model alone (cross-entropy; comp/suff/plaus weights 0; the ``random`` extractor, which
                  costs nothing): what a user training a plain classifier pays.
    all, batched  UNIREX with every objective (task + comprehensiveness + sufficiency + plausibility, learned
                  extractor on a separate encoder), the K top-k variants of both masked inputs in ONE forward of
                  2 K N rows (``batched_k=True``, the default).
    all, loop     the same objectives with one forward of 2 N rows per k (``batched_k=False``): what a hand-rolled
                  loop over k does. Losses must match the batched ones (printed: max abs difference, eval mode).
    all, one k    the same with ``sample_k=True`` (one k drawn per step): the cheap variant the issue allows.

    Batches come from ``data/rationale/synthetic/train.jsonl`` through ``RationaleDataModule`` (the backbone's
    tokenizer, ``--max-length``). Every round runs every variant once, in turn, so outside load falls on all alike;
    the best of ``--repeats`` rounds of ``--steps`` steps is kept, after a warm-up. "load" is what other programs
    used of the machine meanwhile (/proc/stat), so a busy machine shows.

How to run
    python benchmarks/unirex_step.py                                   # tiny-bert, CPU, 1 thread, K = 5
    python benchmarks/unirex_step.py --backbone all-minilm-l6-v2       # a real 6-layer encoder (minilm extra)
    python benchmarks/unirex_step.py --device cuda --backbone hf:bert-base-uncased --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from cpu_load import machine_busy_seconds, own_cpu_seconds  # noqa: E402

from datamodules.rationale import RationaleDataModule  # noqa: E402
from lightning_modules.unirex.module import UNIREX  # noqa: E402

VARIANTS = {
    "task-only": dict(extractor="random", comp_weight=0.0, suff_weight=0.0, plaus_weight=0.0),
    "all, batched": dict(batched_k=True),
    "all, loop": dict(batched_k=False),
    "all, one k": dict(sample_k=True),
}


def batches(backbone: str, batch_size: int, max_length: int, n: int, device: str) -> list[dict]:
    dm = RationaleDataModule(train_files=str(ROOT / "data/rationale/synthetic/train.jsonl"), batch_size=batch_size,
                             max_length=max_length, tokenizer=backbone, shuffle=False)
    dm.setup("fit")
    out = []
    for batch in dm.train_dataloader():
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        if len(out) == n:
            return out
    return out


def step_time(model: UNIREX, opt: torch.optim.Optimizer, data: list[dict], steps: int, device: str) -> float:
    """Seconds per step over ``steps`` steps (cycling through ``data``)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        loss, _ = model.losses(data[i % len(data)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="tiny-bert")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--k", type=float, nargs="+", default=[1, 5, 10, 20, 50])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    data = batches(args.backbone, args.batch_size, args.max_length, 4, args.device)
    models = {}
    for name, kw in VARIANTS.items():
        model = UNIREX(backbone=args.backbone, num_labels=2, train_topk=args.k, **kw).to(args.device)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    # the loop computes the same losses as the batched forward (eval mode: no dropout; same initial weights)
    with torch.no_grad():
        same = [models[n][0].eval().losses(data[0])[0] for n in ("all, batched", "all, loop")]
    print(f"batched vs loop loss, max abs difference: {abs(float(same[0] - same[1])):.2e}")
    for model, _ in models.values():
        model.train()

    for model, opt in models.values():  # warm-up
        step_time(model, opt, data, 2, args.device)
    best = {name: float("inf") for name in models}
    busy0, own0, wall0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            best[name] = min(best[name], step_time(*models[name], data, args.steps, args.device))
    load = (machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0)) / (time.perf_counter() - wall0)

    tokens = data[0]["input_ids"].shape
    print(f"backbone {args.backbone}, device {args.device}, threads {args.threads}, batch {tuple(tokens)}, "
          f"K = {len(args.k)} ({', '.join(f'{k:g}' for k in args.k)}%), best of {args.repeats} x {args.steps} steps, "
          f"outside load {max(load, 0.0):.2f} cores")
    base = best["task-only"]
    print(f"{'variant':<14} {'ms/step':>9} {'x task-only':>12}")
    for name, t in best.items():
        print(f"{name:<14} {t * 1e3:9.1f} {t / base:12.2f}")
    print(f"all objectives / task-only: {best['all, batched'] / base:.2f}x")
    print(f"loop over k / batched k-forward: {best['all, loop'] / best['all, batched']:.2f}x")


if __name__ == "__main__":
    main()
