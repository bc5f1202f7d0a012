"""UNIREX end to end: known-answer learning, batched vs looped k, every extractor, multiple choice, CLI, NRG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from callbacks.rationale_html import RationaleHTML
from datamodules.rationale import RationaleDataModule
from datamodules.rationale_synthetic import make_examples, make_multiple_choice, write_eraser, write_sst
from lightning_modules.unirex.module import UNIREX
from pipelines.nrg import main as nrg_main
from train import main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def _sst(tmp_path: Path, n_train: int = 64, n_eval: int = 32) -> dict[str, str]:
    files = {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        files[f"{split}_files"] = str(tmp_path / f"{split}.jsonl")
        write_sst(make_examples(n, 0, stream=split), files[f"{split}_files"])
    return files


def test_known_answer_learned_extractor_is_plausible_and_more_comprehensive_than_random(tmp_path: Path):
    """On the planted-cue set the jointly trained extractor finds the cues; deleting them hurts, random deleting not."""
    seed_everything(0)
    data = ROOT / "data/rationale/synthetic"
    dm = RationaleDataModule(train_files=str(data / "train.jsonl"), val_files=str(data / "val.jsonl"),
                             test_files=str(data / "test.jsonl"), max_length=128, batch_size=16)
    model = UNIREX(lr=3e-3, sample_k=True)
    trainer = Trainer(max_epochs=3, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, dm)
    learned = trainer.test(model, dm, verbose=False)[0]
    model.hparams.extractor = "random"
    random = trainer.test(model, dm, verbose=False)[0]
    assert learned["test/accuracy"] >= 0.95
    assert learned["test/auprc"] >= 0.9
    assert random["test/auprc"] < 0.5
    assert learned["test/comp_aopc"] > random["test/comp_aopc"] + 0.1
    assert learned["test/suff_aopc"] < random["test/suff_aopc"]


@pytest.mark.parametrize("suff", ["margin", "diff", "kl"])
def test_batched_k_forward_equals_loop_over_k(tmp_path: Path, suff: str):
    dm = RationaleDataModule(**_sst(tmp_path, 16, 8), batch_size=8, tokenizer="tiny-bert", shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    losses, grads = [], []
    for batched in (True, False):
        model = UNIREX(num_labels=2, batched_k=batched, suff_criterion=suff).eval()  # no dropout: same weights
        loss, parts = model.losses(batch)
        loss.backward()
        losses.append([loss.detach(), parts["comp_loss"], parts["suff_loss"]])
        grads.append(model.task.head.weight.grad.clone())
    for a, b in zip(*losses, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize(
    "extractor", ["saliency", "input_x_gradient", "integrated_gradients", "attention", "random", "gold"]
)
def test_every_extractor_trains_and_evaluates(tmp_path: Path, extractor: str):
    """Heuristic extractors need gradients at evaluation: the module turns inference mode off by itself."""
    seed_everything(0)
    dm = RationaleDataModule(**_sst(tmp_path, 32, 16), batch_size=16)
    model = UNIREX(extractor=extractor, plaus_weight=0.0, ig_steps=3)
    trainer = Trainer(max_epochs=1, num_sanity_val_steps=0, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, dm)
    out = trainer.test(model, dm, verbose=False)[0]
    assert json.loads((tmp_path / "metrics.json").read_text())["test/auprc"] == pytest.approx(out["test/auprc"])
    for name in ("accuracy", "comp_aopc", "suff_aopc", "auprc", "token_f1", "iou_f1"):
        assert torch.isfinite(torch.tensor(out[f"test/{name}"])), name
    if extractor == "gold":  # the human rationale is its own perfect plausibility
        assert out["test/auprc"] == pytest.approx(1.0)
        assert out["test/token_f1"] == pytest.approx(1.0)
        assert out["test/iou_f1"] == pytest.approx(1.0)


def test_shared_encoder_and_mlp_head(tmp_path: Path):
    seed_everything(0)
    dm = RationaleDataModule(**_sst(tmp_path, 32, 16), batch_size=16)
    model = UNIREX(extractor_encoder="shared", extractor_head="mlp", extractor_hidden=32)
    Trainer(max_epochs=1, num_sanity_val_steps=0, **QUIET).fit(model, dm)
    assert model.scorer.encoder is None
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("scorer.encoder") for n in names)
    assert any(n.startswith("scorer.head.0") for n in names)
    predictions = Trainer(**QUIET).predict(model, dm)  # over the test split
    assert sum(len(p["preds"]) for p in predictions) == 16
    first = predictions[0]
    assert first["probs"].shape == (16, 2) and first["scores"].shape == first["hard"].shape
    assert torch.allclose(first["probs"].sum(-1), torch.ones(16))


def test_multiple_choice_cose_style(tmp_path: Path):
    """CoS-E-style ERASER data: (B, C, T) option rows, (B, C) logits; one score per option; learning happens."""
    for split, n in (("train", 96), ("val", 32)):
        write_eraser(make_multiple_choice(n, 0, num_choices=3, stream=split), tmp_path / "cose", split)
    seed_everything(0)
    dm = RationaleDataModule(eraser_dir=str(tmp_path / "cose"), batch_size=16)
    model = UNIREX(lr=3e-3, sample_k=True)
    trainer = Trainer(max_epochs=3, num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, dm)
    assert model.multiple_choice and model.hparams.num_labels == 3
    assert model.task.head.out_features == 1
    out = trainer.validate(model, dm, verbose=False)[0]
    assert out["val/auprc"] >= 0.8  # the one cue word of the right option


def test_config_errors():
    with pytest.raises(ValueError, match="plausibility trains a learned extractor"):
        UNIREX(extractor="saliency")
    with pytest.raises(ValueError, match="at least one > 0"):
        UNIREX(task_weight=0, comp_weight=0, suff_weight=0, plaus_weight=0)
    with pytest.raises(ValueError, match="train_topk"):
        UNIREX(train_topk=[0, 10])
    with pytest.raises(ValueError, match="threshold"):
        UNIREX(extractor="random", plaus_weight=0, hard_rationale="threshold")


def test_cli_fit_test_checkpoint_html_and_nrg(tmp_path: Path, capsys):
    """train.py fit + test on the config; metrics.json, the HTML page, and two runs compared by the NRG CLI."""
    small = ["--config", str(ROOT / "configs/unirex.yaml"), "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
             "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"]
    runs = []
    for name, extra in (("learned", []), ("ig", ["--model.extractor", "integrated_gradients",
                                                  "--model.plaus_weight", "0", "--model.ig_steps", "2"])):
        root = tmp_path / name
        cli = main(["fit", *small, *extra, "--trainer.default_root_dir", str(root)])
        log_dir = Path(cli.trainer.log_dir)
        page = (log_dir / "rationales" / "epoch=000.html").read_text()
        assert page.count("class='ex'") == 16 and "gold:" in page
        ckpt = log_dir / "checkpoints" / "last.ckpt"
        restored = UNIREX.load_from_checkpoint(ckpt, weights_only=True)  # the head size comes from the hparams
        assert restored.hparams.num_labels == 2
        cli = main(["test", *small, *extra, "--trainer.default_root_dir", str(root), "--ckpt_path", str(ckpt)])
        metrics = json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())
        assert {"test/accuracy", "test/comp_aopc", "test/auprc", "test/comp_aopc/k=50"} <= set(metrics)
        runs.append(str(Path(cli.trainer.log_dir) / "metrics.json"))
    capsys.readouterr()
    assert nrg_main([*runs, "--names", "learned", "ig", "--out", str(tmp_path / "nrg.json")]) == 0
    table = capsys.readouterr().out
    assert table.split()[:5] == ["run", "faithfulness", "plausibility", "task", "NRG"]
    nrg = json.loads((tmp_path / "nrg.json").read_text())
    for run in ("learned", "ig"):  # the overall score is the mean of the three group scores
        groups = nrg["group_scores"][run]
        assert nrg["overall"][run] == pytest.approx(sum(groups.values()) / 3)
        assert nrg["raw"][run]["comp_aopc"] == pytest.approx(
            json.loads(Path(runs[0 if run == "learned" else 1]).read_text())["test/comp_aopc"])


def test_cli_bad_eraser_span_is_a_one_line_error(tmp_path: Path, capsys):
    folder = tmp_path / "eraser"
    write_eraser(make_examples(4, 0), folder, "train")
    lines = (folder / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["evidences"][0][0]["end_token"] = 10_000
    lines[1] = json.dumps(row)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model", "UNIREX", "--data", "RationaleDataModule", "--data.eraser_dir", str(folder),
              "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and row["annotation_id"] in last


def test_html_callback_marks_hard_and_gold_tokens(tmp_path: Path):
    seed_everything(0)
    dm = RationaleDataModule(**_sst(tmp_path, 16, 8), batch_size=8)
    model = UNIREX(extractor="gold", plaus_weight=0.0)
    html = RationaleHTML(num_examples=3, dirpath=str(tmp_path / "pages"))
    Trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[html], **QUIET).fit(model, dm)
    page = html.last_path.read_text()
    assert page.count("class='ex'") == 3
    # the gold extractor's hard rationale is the human one: as many boxed tokens as gold-highlighted ones
    assert page.count("tok hard") == page.count("tok gold") > 0


def test_two_process_ddp_evaluation_equals_one_process(tmp_path: Path):
    """Every metric keeps sums, so two CPU processes (each half the examples) report the one-process values; the
    files (metrics.json, the HTML page) are written once, by rank 0, without a deadlock on ``trainer.log_dir``."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    files = _sst(tmp_path, 16, 32)
    results = []
    for devices in (1, 2):
        seed_everything(0)
        dm = RationaleDataModule(**files, batch_size=8)
        model = UNIREX(num_labels=2)
        strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60)) if devices == 2 else "auto"
        html = RationaleHTML(num_examples=4)
        root = tmp_path / f"devices{devices}"
        trainer = Trainer(devices=devices, strategy=strategy, max_epochs=1, limit_train_batches=1,
                          num_sanity_val_steps=0, callbacks=[html], default_root_dir=root, **QUIET)
        results.append(trainer.test(model, dm, verbose=False)[0])  # the same initial weights (init_seed) on both
        assert json.loads((root / "metrics.json").read_text())["test/auprc"] == pytest.approx(results[-1]["test/auprc"])
        trainer.fit(model, dm)
        assert (root / "rationales" / "epoch=000.html").read_text().count("class='ex'") == 4
    names = ["accuracy", "f1_macro", "comp_aopc", "suff_aopc", "auprc", "token_f1", "iou_f1"]
    for name in names:
        assert results[1][f"test/{name}"] == pytest.approx(results[0][f"test/{name}"], abs=1e-5), name


def test_model_settings_must_match_the_data(tmp_path: Path):
    dm = RationaleDataModule(**_sst(tmp_path, 16, 8), batch_size=8)
    with pytest.raises(ValueError, match="the data has num_labels=2"):
        Trainer(max_epochs=1, **QUIET).fit(UNIREX(num_labels=3), dm)
    with pytest.raises(ValueError, match="multiple_choice=True"):
        Trainer(max_epochs=1, **QUIET).fit(UNIREX(multiple_choice=True), dm)
