"""FSDP2 on one GPU for every objective: 10 steps with the ``fsdp`` preset (bf16 compute, fp32 master weights and
reduction, activation checkpointing), a checkpoint at steps 5 and 10, then a resume from step 5 to step 10.

    PYTHONUNBUFFERED=1 python scripts/gpu_fsdp_checks.py --out benchmarks/gpu_fsdp2_h200.json

One GPU exercises the same wrapping, state-dict and distributed-checkpoint code as many. Each case runs ``train.py``
through ``tests/sharded/launch.py`` (the cases of ``tests/module_cases.py``, tiny presets, dropout off), several
cases at once. Printed per case: whether fit and resume ran, the first and last training loss, seconds, and the
largest difference between the uninterrupted and the resumed run's weights and optimizer state at step 10 (bf16
GPU kernels need not be bit-deterministic, so this is reported, not asserted). ``--cpu`` is a 2-step dry run here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from module_cases import CASES, case_args, flat  # noqa: E402

from core.checkpointing import read_distributed_state  # noqa: E402

MODES = {"dpo_lora": ("dpo", ["--model.lora_r", "8"]), "dpo_precomputed": ("dpo", ["--model.reference", "precomputed"])}
NAMES = [*(n for n in CASES if n != "downstream"), *MODES]


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
    return rc, time.perf_counter() - start


def max_diff(a: Path, b: Path) -> float:
    x, y = flat(read_distributed_state(a)), flat(read_distributed_state(b))
    if x.keys() != y.keys():
        return float("inf")
    return max((float((x[k].float() - y[k].float()).abs().max()) for k in x
                if isinstance(x[k], torch.Tensor) and x[k].numel()), default=0.0)


def case(name: str, work: Path, steps: int, trainer: list[str]) -> dict[str, Any]:
    base, extra = MODES.get(name, (name, []))
    tmp = work / name
    tmp.mkdir(parents=True)
    args = case_args(base, tmp) + extra
    if name == "dpo_precomputed":
        args += ["--model.reference_cache_dir", str(tmp / "cache")]
    half = steps // 2
    common = [sys.executable, str(ROOT / "tests/sharded/launch.py"), "fit", *args, *trainer,
              "--trainer.max_steps", str(steps), "--trainer.max_epochs", "100", "--trainer.limit_val_batches", "1",
              "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
              "--trainer.log_every_n_steps", "1"]

    def fit(root: Path, *more: str) -> tuple[int, float]:
        callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(root / "ck"), "filename": "{step}", "every_n_train_steps": half,
                                    "save_top_k": -1}}]
        logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}}
        return run([*common, "--trainer.default_root_dir", str(root), "--trainer.callbacks", json.dumps(callbacks),
                    "--trainer.logger", json.dumps(logger), *more], root.with_suffix(".log"))

    row: dict[str, Any] = {"case": name}
    row["fit_rc"], row["fit_s"] = fit(tmp / "full")
    final = tmp / "full" / "ck" / f"step={steps}.ckpt"
    if row["fit_rc"] == 0:
        rows = list(csv.DictReader(next((tmp / "full").rglob("metrics.csv")).open()))
        loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        row["loss_first"], row["loss_last"] = loss[0], loss[-1]
        row["saved"] = final.is_dir() and (tmp / "full" / "ck" / f"step={half}.ckpt").is_dir()
        row["resume_rc"], row["resume_s"] = fit(tmp / "resumed", "--ckpt_path",
                                                str(tmp / "full" / "ck" / f"step={half}.ckpt"))
        if row["resume_rc"] == 0:
            row["resume_max_abs_diff"] = max_diff(final, tmp / "resumed" / "ck" / f"step={steps}.ckpt")
    for part in ("full", "resumed"):
        log = tmp / f"{part}.log"
        if log.exists() and row.get(f"{'fit' if part == 'full' else 'resume'}_rc", 0) != 0:
            row[f"{part}_error"] = log.read_text()[-1500:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu", action="store_true", help="a 2-step dry run on the CPU (fp32)")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=NAMES)
    args = parser.parse_args()
    trainer = ["--config", str(ROOT / "configs/trainer/fsdp.yaml"), "--trainer.devices", "1"]
    steps = 10
    if args.cpu:
        trainer = ["--config", str(ROOT / "configs/trainer/fsdp_cpu.yaml"), "--trainer.devices", "1"]
        steps = 2
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "preset": trainer[1], "steps": steps}
    print(json.dumps(info))
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda n: case(n, Path(work), steps, trainer), args.cases))
    print(f"{'case':<20}{'fit':>5}{'loss first':>12}{'loss last':>11}{'saved':>7}{'resume':>8}{'max diff':>11}{'s':>7}")
    for r in rows:
        print(f"{r['case']:<20}{'ok' if r['fit_rc'] == 0 else 'FAIL':>5}{r.get('loss_first', float('nan')):>12.4f}"
              f"{r.get('loss_last', float('nan')):>11.4f}{str(r.get('saved', '-')):>7}"
              f"{'ok' if r.get('resume_rc') == 0 else 'FAIL':>8}{r.get('resume_max_abs_diff', float('nan')):>11.2e}"
              f"{r['fit_s'] + r.get('resume_s', 0):>7.1f}")
    for r in rows:
        for part in ("full_error", "resumed_error"):
            if part in r:
                print(f"--- {r['case']} {part}:\n{r[part]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
