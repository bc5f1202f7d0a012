"""Cached representations and downstream heads: file contract and errors, known-answer learning, lazy build, CLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from safetensors.torch import save_file

from core.errors import ConfigError, DataError
from datamodules.representations import RepresentationDataModule, read_representations
from lightning_modules.prefix.heads import DownstreamHead
from train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def save(path: Path, x: torch.Tensor, y: torch.Tensor | None, **meta: str) -> Path:
    tensors = {"embeddings": x.contiguous()}
    if y is not None:
        tensors["labels"] = y.contiguous()
    save_file(tensors, str(path), metadata=meta or None)
    return path


def save_parquet(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    table = pa.table({"embedding": pa.array(x.tolist(), type=pa.list_(pa.float32())), "label": y.numpy()})
    pq.write_table(table, path)
    return path


def trainer(**kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return Trainer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------- datamodule
def test_safetensors_and_parquet_read_the_same(tmp_path: Path) -> None:
    x = torch.randn(10, 3)
    y = torch.arange(10) % 3
    a = read_representations(save(tmp_path / "a.safetensors", x, y, backbone="tiny-bert"))
    b = read_representations(save_parquet(tmp_path / "b.parquet", x, y))
    for got in (a, b):
        torch.testing.assert_close(got[0], x)
        assert torch.equal(got[1], y) and got[1].dtype == torch.int64
    assert a[2] == {"backbone": "tiny-bert"}


@pytest.mark.parametrize("fmt", ["safetensors", "parquet"])
def test_type_inferred_from_label_dtype_and_batches(tmp_path: Path, fmt: str) -> None:
    write = save if fmt == "safetensors" else save_parquet
    x = torch.randn(7, 4)
    cls = RepresentationDataModule(train_file=str(write(tmp_path / f"c.{fmt}", x, torch.tensor([0, 2, 1, 0, 2, 1, 0]))),
                                   batch_size=3, shuffle=False)
    cls.setup()
    assert (cls.task_type, cls.num_labels, cls.input_dim) == ("classification", 3, 4)
    batch = next(iter(cls.train_dataloader()))
    torch.testing.assert_close(batch["x"], x[:3])
    assert batch["labels"].tolist() == [0, 2, 1] and batch["labels"].dtype == torch.int64
    reg = RepresentationDataModule(train_file=str(write(tmp_path / f"r.{fmt}", x, torch.linspace(0, 1, 7))),
                                   batch_size=3, shuffle=False)
    reg.setup()
    assert (reg.task_type, reg.num_labels, reg.input_dim) == ("regression", 1, 4)
    batch = next(iter(reg.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    torch.testing.assert_close(batch["labels"], torch.linspace(0, 1, 7)[:3])


def test_num_labels_over_all_splits_and_explicit_task_type(tmp_path: Path) -> None:
    train = save(tmp_path / "t.safetensors", torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    val = save(tmp_path / "v.safetensors", torch.randn(3, 2), torch.tensor([0, 3, 1]))
    dm = RepresentationDataModule(train_file=str(train), val_file=str(val))
    dm.setup()
    assert dm.num_labels == 4
    dm = RepresentationDataModule(train_file=str(train), task_type="regression")
    dm.setup()
    assert dm.num_labels == 1 and dm.datasets["train"].y.dtype == torch.float32


def test_standardize_uses_training_statistics(tmp_path: Path) -> None:
    x = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    x[:, 2] = 7.0  # a constant column: divided by 1, not by 0
    v = torch.randn(5, 3)
    dm = RepresentationDataModule(train_file=str(save(tmp_path / "t.safetensors", x, torch.zeros(50))),
                                  val_file=str(save(tmp_path / "v.safetensors", v, torch.zeros(5))), standardize=True)
    dm.setup()
    z = dm.datasets["train"].x
    torch.testing.assert_close(z[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :2].std(0), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.equal(z[:, 2], torch.zeros(50))
    std = x.std(0)
    std[2] = 1.0
    torch.testing.assert_close(dm.datasets["val"].x, (v - x.mean(0)) / std)


def _bad_cases(tmp: Path) -> list[tuple[dict[str, str], str]]:
    ok = save(tmp / "ok.safetensors", torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    no_labels = save(tmp / "nolabels.safetensors", torch.randn(4, 3), None)
    short = save(tmp / "short.safetensors", torch.randn(4, 3), torch.tensor([0, 1, 0]))
    wide = save(tmp / "wide.safetensors", torch.randn(4, 5), torch.tensor([0, 1, 0, 1]))
    nan_x = torch.randn(4, 3)
    nan_x[2, 1] = math.nan
    nan = save(tmp / "nan.safetensors", nan_x, torch.tensor([0, 1, 0, 1]))
    nan_y = save(tmp / "nany.safetensors", torch.randn(4, 3), torch.tensor([0.5, math.nan, 1.0, 2.0]))
    floats = save(tmp / "floats.safetensors", torch.randn(4, 3), torch.tensor([0.5, 1.5, 1.0, 2.0]))
    negative = save(tmp / "neg.safetensors", torch.randn(4, 3), torch.tensor([0, -1, 0, 1]))
    other = save(tmp / "other.safetensors", torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), prefixes='["a"]')
    mine = save(tmp / "mine.safetensors", torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), prefixes='["a", "b"]')
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]])}), tmp / "nolabel.parquet")
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], [1.0]]), "label": [0, 1]}), tmp / "ragged.parquet")
    (tmp / "x.npy").write_bytes(b"")
    (tmp / "junk.safetensors").write_bytes(b"not a safetensors file")
    return [
        ({"train_file": str(no_labels)}, f"{no_labels}: no tensor 'labels'"),
        ({"train_file": str(short)}, f"{short}: 4 embeddings but 3 labels"),
        ({"train_file": str(ok), "val_file": str(wide)}, f"{wide}: embeddings have D=5, but {ok} has D=3"),
        ({"train_file": str(ok), "val_file": str(nan)}, f"{nan}: embeddings have NaN or infinite"),
        ({"train_file": str(nan_y)}, f"{nan_y}: labels have NaN"),
        ({"train_file": str(ok), "val_file": str(floats)}, f"{floats}: labels are torch.float32, but {ok}"),
        ({"train_file": str(floats), "task_type": "classification"}, f"{floats}: labels are fractional"),
        ({"train_file": str(negative)}, f"{negative}: negative class labels"),
        ({"train_file": str(ok), "num_labels": 1}, f"{ok}: class label 1 >= num_labels=1"),
        ({"train_file": str(mine), "val_file": str(other)}, f"{other}: metadata prefixes='[\"a\"]', but {mine} has"),
        ({"train_file": str(tmp / "nolabel.parquet")}, f"{tmp / 'nolabel.parquet'}: no column 'label'"),
        ({"train_file": str(tmp / "ragged.parquet")}, f"{tmp / 'ragged.parquet'}: row 1: embedding has 1 values"),
        ({"train_file": str(tmp / "x.npy")}, f"{tmp / 'x.npy'}: unsupported file type '.npy'"),
        ({"train_file": str(tmp / "junk.safetensors")}, f"{tmp / 'junk.safetensors'}: not a readable safetensors"),
        ({"train_file": str(tmp / "missing.safetensors")}, f"{tmp / 'missing.safetensors'}: no such file"),
    ]


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    for kwargs, message in _bad_cases(tmp_path):
        with pytest.raises(DataError) as info:
            RepresentationDataModule(**kwargs).setup()
        assert str(info.value).startswith(message), (str(info.value), message)
    # the metadata check can be turned off
    dm = RepresentationDataModule(train_file=str(tmp_path / "mine.safetensors"),
                                  val_file=str(tmp_path / "other.safetensors"), check_metadata=False)
    dm.setup()
    assert dm.metadata == {"prefixes": '["a", "b"]'}
    with pytest.raises(ConfigError, match="standardize=True needs train_file"):
        RepresentationDataModule(val_file=str(tmp_path / "ok.safetensors"), standardize=True)


# ----------------------------------------------------------------------------------------------- heads
def fit_head(tmp_path: Path, x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor,
             epochs: int, **head: Any) -> dict[str, float]:
    seed_everything(0)
    dm = RepresentationDataModule(train_file=str(save(tmp_path / "train.safetensors", x, y)),
                                  val_file=str(save(tmp_path / "val.safetensors", vx, vy)), batch_size=32)
    model = DownstreamHead(**head)
    t = trainer(max_epochs=epochs)
    t.fit(model, datamodule=dm)
    return {k: float(v) for k, v in t.validate(model, datamodule=dm, verbose=False)[0].items()}


def test_linear_head_separates_classes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 8, generator=g)
        scores = x @ w  # (N, 3)
        top2 = scores.topk(2, dim=1).values
        keep = top2[:, 0] - top2[:, 1] > 0.3  # a margin: linearly separable with room to spare
        return x[keep], scores[keep].argmax(1)

    metrics = fit_head(tmp_path, *draw(600), *draw(300), epochs=25, head="linear", lr=3e-2)
    assert metrics["val/accuracy"] >= 0.97
    assert metrics["val/f1_macro"] >= 0.95


def test_linear_head_regression_reaches_noise_floor(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    w, noise = torch.randn(6, generator=g), 0.1

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 6, generator=g)
        return x, x @ w + 0.5 + noise * torch.randn(n, generator=g)

    metrics = fit_head(tmp_path, *draw(512), *draw(256), epochs=40, head="linear", lr=3e-2)
    assert metrics["val/mse"] < 1.5 * noise**2  # the noise variance is 0.01; the signal's variance is ~|w|^2 ~ 6
    assert metrics["val/pearson"] > 0.99 and metrics["val/spearman"] > 0.99
    assert metrics["val/loss"] == pytest.approx(metrics["val/mse"], rel=1e-4)


def test_mlp_learns_xor_that_linear_cannot(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 4, generator=g) * 2 - 1  # two informative dims, two distractors
        return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()

    train, val = draw(512), draw(256)
    mlp = fit_head(tmp_path, *train, *val, epochs=40, head="mlp", hidden=32, dropout=0.0, lr=1e-2)
    linear = fit_head(tmp_path, *train, *val, epochs=40, head="linear", lr=1e-2)
    assert mlp["val/accuracy"] >= 0.9
    assert linear["val/accuracy"] <= 0.65


def test_lazy_build_needs_dims_or_datamodule(tmp_path: Path) -> None:
    model = DownstreamHead()
    assert model.net is None
    with pytest.raises(RuntimeError, match="not built yet"):
        model(torch.zeros(1, 3))
    loader = torch.utils.data.DataLoader([{"x": torch.zeros(3), "labels": torch.tensor(0)}])
    with pytest.raises(ConfigError, match="needs input_dim and num_labels"):
        trainer(max_steps=1).fit(model, train_dataloaders=loader)
    built = DownstreamHead(input_dim=3, num_labels=1)
    assert built.hparams.task_type == "regression" and built(torch.zeros(2, 3)).shape == (2,)
    dm = RepresentationDataModule(train_file=str(save(tmp_path / "t.safetensors", torch.randn(4, 5),
                                                      torch.tensor([0, 1, 0, 1]))))
    with pytest.raises(ConfigError, match="input_dim=3 but the datamodule gives 5"):
        trainer(max_steps=1).fit(DownstreamHead(input_dim=3, num_labels=2), datamodule=dm)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_fit_then_validate_from_checkpoint(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    x, vx = torch.randn(96, 6, generator=g), torch.randn(40, 6, generator=g)
    y, vy = (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), (vx[:, 0] > 0).long() + (vx[:, 1] > 0).long()
    train, val = save(tmp_path / "train.safetensors", x, y), save(tmp_path / "val.safetensors", vx, vy)
    common = ["--model", "DownstreamHead", "--data", "RepresentationDataModule", "--data.train_file", str(train),
              "--data.val_file", str(val), "--data.batch_size", "16", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.default_root_dir", str(tmp_path)]
    cli = main(["fit", *common, "--model.head", "mlp", "--model.hidden", "16", "--model.lr", "1e-2",
                "--trainer.max_epochs", "3"])
    assert cli.trainer.global_step == 18
    fitted = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert set(fitted) == {"val/loss", "val/accuracy", "val/f1_macro"}
    (ckpt,) = (tmp_path / "lightning_logs").rglob("*.ckpt")
    # The checkpoint alone rebuilds the head: the dims taken from the datamodule were saved as hyperparameters.
    loaded = DownstreamHead.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    assert (loaded.hparams.input_dim, loaded.hparams.num_labels, loaded.hparams.task_type) == (6, 3, "classification")
    with torch.no_grad():
        torch.testing.assert_close(loaded(vx), cli.model.eval()(vx))
    # validate through the CLI: a fresh, unbuilt module is built from the datamodule, then the weights restored.
    cli = main(["validate", *common, "--model.head", "mlp", "--model.hidden", "16", "--ckpt_path", str(ckpt)])
    again = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert again == pytest.approx(fitted, abs=1e-6)
