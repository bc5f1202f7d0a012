"""MSD's model side (Jin et al., Findings of EMNLP 2021): KD losses, modality removal, MultimodalClassifier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from core.backbones import load_tokenizer
from core.errors import ConfigError
from core.losses import kd_sigmoid, kd_softmax, task_loss
from lightning_modules.msd.classifier import MultimodalClassifier, classification_metrics
from lightning_modules.msd.modality import only, remove_image, remove_text, special_token_ids
from train import main

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
BOS, EOS, UNK, PAD = 1, 2, 3, 0  # the tiny tokenizer's special ids; it has no mask token
LN3 = math.log(3.0)


# ------------------------------------------------------------------------------------------------- losses
def test_kd_softmax_hand_computed_with_temperature():
    # T = 1: teacher [ln 3, 0] -> q = [3/4, 1/4]; student [0, 0] -> p = [1/2, 1/2]
    # KL(q || p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812
    # T = 2: teacher [2 ln 3, 0] / 2 gives the same q, student [0, 0] the same p: T^2 * 0.130812 = 0.523248
    student = torch.zeros(2, 2)
    loss, metrics = kd_softmax(student, torch.tensor([[LN3, 0.0], [0.0, 0.0]]), temperature=1.0)
    assert loss.item() == pytest.approx(0.130812 / 2, abs=1e-6)  # batch mean with a second example at KL 0
    per_example, _ = kd_softmax(student, torch.tensor([[2 * LN3, 0.0], [0.0, 0.0]]), 2.0, reduction="none")
    assert per_example.shape == (2,)
    assert per_example.tolist() == pytest.approx([0.523248, 0.0], abs=1e-6)
    assert metrics["agreement"].item() == 1.0  # argmax 0 everywhere (ties go to the first class)
    # gradient w.r.t. the student logits: T * (p - q) / B per row -> row 1 at T=2: 2 * ([1/2, 1/2] - [3/4, 1/4]) / 2
    s = torch.zeros(2, 2, requires_grad=True)
    kd_softmax(s, torch.tensor([[2 * LN3, 0.0], [0.0, 0.0]]), 2.0)[0].backward()
    assert s.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)


def test_kd_sigmoid_hand_computed_and_equals_bce_minus_entropy():
    # label 1: teacher 0 -> q = 1/2; student ln 3 -> p = 3/4
    #   KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = -0.202733 + 0.346574 = 0.143841
    # label 2: teacher == student -> 0; mean over labels: 0.0719205
    student, teacher = torch.tensor([[LN3, 1.5]]), torch.tensor([[0.0, 1.5]])
    loss, _ = kd_sigmoid(student, teacher, 1.0)
    assert loss.item() == pytest.approx(0.0719205, abs=1e-6)
    # T = 2 with logits doubled: same q and p, times T^2 = 4 -> 0.287682
    loss2, _ = kd_sigmoid(2 * student, 2 * teacher, 2.0)
    assert loss2.item() == pytest.approx(0.287682, abs=1e-6)
    # BCE against the teacher's soft targets minus their entropy is the same value
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    q = torch.sigmoid(t / 3.0)
    bce = F.binary_cross_entropy_with_logits(s / 3.0, q, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t / 3.0, q, reduction="none")
    per_example, _ = kd_sigmoid(s, t, 3.0, reduction="none")
    assert torch.allclose(per_example, 9.0 * (bce - entropy).mean(-1), atol=1e-5)


def test_kd_is_zero_when_student_equals_teacher_and_teacher_gets_no_gradient():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    teacher = logits.clone().requires_grad_(True)
    for fn in (kd_softmax, kd_sigmoid):
        for temperature in (1.0, 4.0):
            per_example, metrics = fn(logits, teacher, temperature, reduction="none")
            assert torch.allclose(per_example, torch.zeros(3), atol=1e-6)
            assert metrics["agreement"].item() == 1.0
    assert not kd_softmax(logits, teacher)[0].requires_grad  # teacher targets are detached
    with pytest.raises(ValueError, match="temperature"):
        kd_softmax(logits, logits, 0.0)


def test_task_loss_hand_computed():
    logits = torch.tensor([[0.0, LN3]])  # softmax [1/4, 3/4]; sigmoid [1/2, 3/4]
    loss, _ = task_loss(logits, torch.tensor([1]), multi_label=False)
    assert loss.item() == pytest.approx(-math.log(0.75), abs=1e-6)  # 0.287682
    # multi-hot [1, 0]: (-ln 1/2 - ln(1 - 3/4)) / 2 = (0.693147 + 1.386294) / 2 = 1.039721
    loss, _ = task_loss(logits, torch.tensor([[1.0, 0.0]]), multi_label=True)
    assert loss.item() == pytest.approx(1.039721, abs=1e-6)
    assert task_loss(logits.repeat(3, 1), torch.ones(3, dtype=torch.long), False, reduction="none")[0].shape == (3,)
    with pytest.raises(ValueError, match="multi-label"):
        task_loss(logits, torch.tensor([1]), multi_label=True)


# ------------------------------------------------------------------------------------------------ batches
def make_batch(n: int, num_labels: int = 2, multi_label: bool = False, seed: int = 0, length: int = 12,
               image_size: int = 64) -> dict[str, Any]:
    """BOS text EOS, right-padded; random texts of random lengths, random images and labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (n,), generator=g)  # with BOS and EOS
    ids = torch.randint(4, 4096, (n, length), generator=g)
    pos = torch.arange(length).expand(n, length)
    ids = ids.masked_fill(pos == 0, BOS).masked_fill(pos == lengths[:, None] - 1, EOS)
    mask = (pos < lengths[:, None]).long()
    labels = (torch.randint(0, 2, (n, num_labels), generator=g).float() if multi_label
              else torch.randint(0, num_labels, (n,), generator=g))
    return {"pixel_values": torch.randn(n, 3, image_size, image_size, generator=g), "input_ids": ids.masked_fill(
        mask == 0, PAD), "attention_mask": mask, "labels": labels, "ids": [f"{seed}-{i}" for i in range(n)]}


def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: [r[k] for r in rows] if k == "ids" else torch.stack([r[k] for r in rows]) for k in rows[0]}


class TinyMultimodalData(LightningDataModule):
    """In-memory image-text batches with the datamodule contract: ``num_labels``, ``multi_label``, the tokenizer."""

    def __init__(self, num_labels: int = 2, multi_label: bool = False, size: int = 16, batch_size: int = 8) -> None:
        super().__init__()
        self.num_labels, self.multi_label, self.size, self.batch_size = num_labels, multi_label, size, batch_size
        self.tokenizer: Any = None

    def setup(self, stage: str) -> None:
        self.tokenizer = self.trainer.lightning_module.tokenizer  # the model's, as the real datamodule takes it

    def _loader(self, seed: int) -> DataLoader:
        batch = make_batch(self.size, self.num_labels, self.multi_label, seed)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(self.size)]
        return DataLoader(rows, batch_size=self.batch_size, collate_fn=_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)


# ----------------------------------------------------------------------------------------- modality removal
def test_remove_image_zero_and_blank():
    batch = make_batch(2, image_size=8)
    assert torch.equal(remove_image(batch, "zero")["pixel_values"], torch.zeros(2, 3, 8, 8))
    blank = remove_image(batch, "blank")["pixel_values"]
    # white (1.0) normalised: (1 - 0.485) / 0.229 = 2.248908, (1 - 0.456) / 0.224 = 2.428571, (1 - 0.406) / 0.225
    assert blank[1, :, 3, 5].tolist() == pytest.approx([2.248908, 2.428571, 2.64], abs=1e-5)
    assert remove_image(batch, "blank", mean=(0.5,) * 3, std=(0.5,) * 3)["pixel_values"].eq(1.0).all()
    assert batch["pixel_values"].abs().sum() > 0  # the input is left alone


def test_remove_text_empty_keeps_only_special_tokens():
    tok = load_tokenizer("tiny-bert")
    batch = make_batch(4)
    batch["input_ids"][2, 1:3] = UNK  # unknown tokens are text: they go too
    batch["token_type_ids"] = torch.ones_like(batch["input_ids"]) * batch["attention_mask"]
    out = remove_text(batch, "empty", tok)
    assert out["input_ids"].shape == batch["input_ids"].shape
    assert (out["input_ids"][:, :2] == torch.tensor([BOS, EOS])).all() and (out["input_ids"][:, 2:] == PAD).all()
    assert (out["attention_mask"][:, :2] == 1).all() and (out["attention_mask"][:, 2:] == 0).all()
    assert (out["token_type_ids"][:, :2] == 1).all() and (out["token_type_ids"][:, 2:] == 0).all()
    assert set(special_token_ids(tok)) == {PAD, BOS, EOS}
    # a left-padded input comes out right-padded; a row without any special token keeps one attended BOS
    left = {"input_ids": torch.tensor([[PAD, PAD, BOS, 7, 8, EOS], [9, 10, 11, 12, 13, 14]]),
            "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}
    out = remove_text(left, "empty", tok)
    assert out["input_ids"].tolist() == [[BOS, EOS] + [PAD] * 4, [BOS] + [PAD] * 5]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    # special tokens typed inside a text are text: every row becomes the same empty encoding
    typed = {"input_ids": torch.tensor([[BOS, 7, EOS, 8, BOS, 9, EOS], [BOS, 7, EOS, PAD, PAD, PAD, PAD]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])}
    out = remove_text(typed, "empty", tok)
    assert out["input_ids"][0].tolist() == out["input_ids"][1].tolist() == [BOS, EOS] + [PAD] * 5


def test_remove_text_mask_keeps_length_and_specials():
    tok = load_tokenizer("tiny-bert")  # no mask token: the unk token stands in
    batch = make_batch(4)
    out = remove_text(batch, "mask", tok)
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    real, special = batch["attention_mask"].bool(), torch.isin(batch["input_ids"], torch.tensor([BOS, EOS]))
    assert (out["input_ids"][real & ~special] == UNK).all()
    assert torch.equal(out["input_ids"][~real | special], batch["input_ids"][~real | special])


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_removed_modality_cannot_reach_the_model(fusion: str):
    """On only(batch, m) the output is the same whatever the removed modality held (and differs when m differs)."""
    model = MultimodalClassifier(fusion=fusion, num_labels=3).eval()
    tok = model.tokenizer
    a, b = make_batch(4, seed=0), make_batch(4, seed=1)  # other images, other texts (other lengths too)
    other_images = {**a, "pixel_values": b["pixel_values"]}
    other_texts = {**a, "input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    words = a["attention_mask"].bool() & (a["input_ids"] > UNK)
    other_words = torch.randint(4, 4096, words.shape, generator=torch.Generator().manual_seed(2))
    same_length = {**a, "input_ids": torch.where(words, other_words, a["input_ids"])}  # for `mask`: same lengths
    with torch.no_grad():
        assert not torch.allclose(model(a), model(other_images))  # the full model sees both inputs
        assert not torch.allclose(model(a), model(other_texts))
        for image_mode in ("zero", "blank"):
            text_only = model(only(a, "text", image_mode=image_mode))
            assert torch.equal(text_only, model(only(other_images, "text", image_mode=image_mode)))
        image_only = model(only(a, "image", text_mode="empty", tokenizer=tok))
        assert torch.equal(image_only, model(only(other_texts, "image", text_mode="empty", tokenizer=tok)))
        masked = model(only(a, "image", text_mode="mask", tokenizer=tok))
        assert torch.equal(masked, model(only(same_length, "image", text_mode="mask", tokenizer=tok)))


# ------------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize(("fusion", "multi_label"), [("concat", False), ("concat", True),
                                                    ("cross_attention", False), ("cross_attention", True)])
def test_builds_offline_and_a_few_steps_lower_the_loss(fusion: str, multi_label: bool):
    model = MultimodalClassifier(fusion=fusion, num_labels=3, multi_label=multi_label, dropout=0.0, lr=3e-3)
    batch = make_batch(8, 3, multi_label)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = task_loss(model(batch), batch["labels"], multi_label)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.05
    probs = model.predict_step(batch, 0)
    assert probs.shape == (8, 3) and ((probs >= 0) & (probs <= 1)).all()
    if not multi_label:
        assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-5)


def test_fit_logs_metrics_and_checkpoint_round_trip(tmp_path: Path):
    seed_everything(0)
    model = MultimodalClassifier()  # num_labels / multi_label come from the datamodule at setup
    dm = TinyMultimodalData(num_labels=2)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, dm)
    assert dm.tokenizer is model.tokenizer
    assert {"train/loss", "val/loss", "val/accuracy", "val/f1_macro", "val/auroc"} <= set(trainer.callback_metrics)
    out = trainer.test(model, dm, verbose=False)[0]
    assert set(out) == {"test/loss", "test/accuracy", "test/f1_macro", "test/auroc"}
    path = trainer.checkpoint_callback.best_model_path
    loaded = MultimodalClassifier.load_from_checkpoint(path, weights_only=True).eval()
    assert (loaded.hparams.num_labels, loaded.hparams.multi_label) == (2, False)
    batch = make_batch(4, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model.eval()(batch))


def test_train_py_fits_multi_label_cross_attention(tmp_path: Path):
    cli = main(["fit", "--model", "MultimodalClassifier", "--model.fusion", "cross_attention",
                "--data", f"{__name__}.TinyMultimodalData", "--data.num_labels", "3", "--data.multi_label", "true",
                "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.hparams.multi_label is True and cli.model.hparams.num_labels == 3
    assert {"train/loss", "val/loss", "val/f1_micro", "val/f1_macro"} <= set(cli.trainer.callback_metrics)


def test_multiclass_auroc_and_bad_settings(tmp_path: Path):
    metrics = classification_metrics(3, multi_label=False)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    metrics.update(probs, torch.tensor([0, 1, 2, 0]))
    assert metrics.compute()["auroc"].item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="divisible"):
        MultimodalClassifier(fusion="cross_attention", fusion_hidden=30, fusion_heads=4)
    with pytest.raises(ConfigError, match="timm"):
        MultimodalClassifier(image_backbone="tiny-bert")
    with pytest.raises(ConfigError, match="num_labels=3 but the datamodule gives 2"):
        Trainer(max_steps=1, default_root_dir=tmp_path, **QUIET).fit(MultimodalClassifier(num_labels=3),
                                                                   TinyMultimodalData(num_labels=2))
    dm = TinyMultimodalData()
    dm.image_size = 32
    with pytest.raises(ConfigError, match="32x32 images"):
        Trainer(max_steps=1, default_root_dir=tmp_path, **QUIET).fit(MultimodalClassifier(), dm)


def test_teacher_config_through_train_py(tmp_path):
    """configs/multimodal_teacher.yaml through train.py on the committed synthetic set, then test the checkpoint."""
    from pathlib import Path

    from train import main

    root = Path(__file__).resolve().parents[2]
    small = ["--config", str(root / "configs/multimodal_teacher.yaml"), "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches",
             "2", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
             "--trainer.callbacks.dirpath", str(tmp_path / "export")]
    cli = main(["fit", *small])
    assert MultimodalClassifier.load(tmp_path / "export").hparams.image_backbone == "timm:resnet10t"
    ckpt = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    assert cli.model.hparams.num_labels == 2 and cli.model.hparams.multi_label is False
    cli = main(["test", *small, "--ckpt_path", str(ckpt)])
    metrics = cli.trainer.callback_metrics
    assert {"test/accuracy", "test/auroc", "test/f1_macro"} <= set(metrics)
    assert 0.0 <= float(metrics["test/auroc"]) <= 1.0


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_every_trainable_parameter_gets_a_gradient(fusion):
    """Plain DDP refuses parameters without a gradient: with a CNN whose timm head has a norm, cross-attention
    (which reads the feature map, not the head) freezes that norm instead of leaving it unused."""
    from lightning_modules.msd.classifier import MultimodalNet

    net = MultimodalNet.build("timm:convnext_atto", "tiny-bert", 2, image_size=32, fusion=fusion, hidden=32, heads=4)
    batch = make_batch(4)
    batch["pixel_values"] = torch.randn(4, 3, 32, 32)
    net(batch).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert (frozen != []) == (fusion == "cross_attention")


def test_num_labels_given_multi_label_left_to_the_data(tmp_path):
    """num_labels without multi_label: a multi-label datamodule rebuilds the model as multi-label (no false error)."""
    model = MultimodalClassifier(num_labels=3)
    assert model.hparams.multi_label is False  # usable on its own
    model.trainer = type("T", (), {"datamodule": type("D", (), {"num_labels": 3, "multi_label": True})()})()
    model.setup("fit")
    assert model.hparams.multi_label is True and model.net.head.out_features == 3
