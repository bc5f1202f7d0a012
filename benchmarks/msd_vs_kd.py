"""MSD's weighting schemes against plain KD at equal steps, over seeds, on the synthetic planted-modality set.

What is compared
    Every run distils the same teacher (``runs/multimodal_teacher/export``, made by
    ``configs/multimodal_teacher.yaml`` when missing) into the student of ``configs/msd.yaml`` for ``--steps``
    optimizer steps, from the same initialisation per seed and with the same batches; only ``--model.weighting``
    differs: ``none`` (plain KD: task + KD on the full input), ``uniform``, ``dataset``, ``instance`` and
    ``learned`` (bilevel weights; it sets 10% of the training rows aside as held-out rows, so it trains on 540
    rows, not 600, and its steps cost more). Each student is then tested on the test split: accuracy, AUROC, and
    its KD to the teacher on the image-only and text-only inputs (what the modality terms train).

How to run
    python benchmarks/msd_vs_kd.py                       # 3 seeds x 5 schemes, 76 steps (4 epochs), 1 thread
    python benchmarks/msd_vs_kd.py --seeds 0 --steps 38 --schemes none instance
    python benchmarks/msd_vs_kd.py --model.image_backbone=timm:test_resnet     # other training-CLI flags pass through
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from core.losses import kd_softmax  # noqa: E402
from lightning_modules.msd.classifier import MultimodalClassifier  # noqa: E402
from lightning_modules.msd.modality import views  # noqa: E402
from train import main  # noqa: E402


def modality_kd(student: MultimodalClassifier, teacher: MultimodalClassifier, dm, settings) -> tuple[float, float]:
    """Mean KD (T = 2) of the student to the teacher on the image-only and text-only test inputs."""
    total, n = torch.zeros(2), 0
    for batch in dm.test_dataloader():
        with torch.no_grad():
            v = views(batch, settings.image_mode, settings.text_mode, dm.tokenizer, settings.image_mean,
                      settings.image_std)
            s, t = student.net(v), teacher.net(v)
        s, t = s.view(3, -1, s.shape[-1]), t.view(3, -1, t.shape[-1])
        total += torch.stack([kd_softmax(s[i], t[i], 2.0, "none")[0].sum() for i in (1, 2)])
        n += batch["labels"].shape[0]
    return float(total[0] / n), float(total[1] / n)


def run(scheme: str, seed: int, steps: int, out: Path, overrides: list[str]) -> dict[str, float]:
    args = ["--config", str(ROOT / "configs/msd.yaml"), "--seed_everything", str(seed),
            "--model.init_seed", str(seed), "--data.seed", str(seed), "--model.weighting", scheme,
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(out / f"{scheme}-{seed}"),
            "--trainer.callbacks.dirpath", str(out / f"{scheme}-{seed}" / "student")]
    if scheme == "learned":
        args += ["--data.heldout_fraction", "0.1"]
    cli = main(["fit", *args, *overrides])
    model, dm = cli.model.eval(), cli.datamodule
    metrics = cli.trainer.test(model, datamodule=dm, verbose=False)[0]
    teacher = MultimodalClassifier.load(model.hparams.teacher)
    kd_image, kd_text = modality_kd(model, teacher, dm, model.teacher.settings)
    return {"accuracy": metrics["test/accuracy"], "auroc": metrics["test/auroc"], "kd_image": kd_image,
            "kd_text": kd_text}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schemes", nargs="+", default=["none", "uniform", "dataset", "instance", "learned"])
    parser.add_argument("--steps", type=int, default=76)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/msd_vs_kd")
    args, overrides = parser.parse_known_args()  # the rest goes to the training CLI, e.g. --model.image_backbone=...
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for scheme in args.schemes:
            results.setdefault(scheme, []).append(run(scheme, seed, args.steps, Path(args.out), overrides))
            print(f"{scheme:9s} seed {seed}: {json.dumps(results[scheme][-1])}", flush=True)
    print(f"\n{args.steps} steps, seeds {args.seeds}, {' '.join(overrides) or 'configs/msd.yaml'}; test split (200 "
          "rows); mean ± std over seeds")
    print(f"{'weighting':10s} {'accuracy':>15s} {'AUROC':>15s} {'KD image-only':>15s} {'KD text-only':>15s}")
    for scheme, rows in results.items():
        cells = []
        for key in ("accuracy", "auroc", "kd_image", "kd_text"):
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        print(f"{scheme:10s} " + " ".join(f"{c:>15s}" for c in cells))
    base = statistics.mean(r["accuracy"] for r in results.get("none", [{"accuracy": float("nan")}]))
    for scheme, rows in results.items():
        if scheme != "none":
            print(f"accuracy {scheme} - plain KD: {statistics.mean(r['accuracy'] for r in rows) - base:+.3f}")


if __name__ == "__main__":
    main_cli()
