"""Multimodal data (MSD): JSONL / Hateful Memes / MM-IMDB / SNLI-VE readers, images, batches, the synthetic set."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from transformers import BertTokenizerFast

from core.backbones import load_tokenizer
from core.errors import ConfigError, DataError
from datamodules import multimodal_synthetic as synth
from datamodules.multimodal import (
    MMIMDB_GENRES,
    MultimodalDataModule,
    collate_multimodal,
    read_jsonl,
    read_mmimdb,
    read_snli_ve,
    resolve_labels,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "data" / "multimodal" / "synthetic"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "on", "the", "grass", "meme"]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_tokenizer("tiny-bert")  # byte-level BPE: adds no specials; BOS / EOS exist


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast(str(path))  # [CLS] / [SEP] and token_type_ids


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 12) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path.name


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def memes(folder: Path, n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    """Hateful-Memes-style rows with their PNGs under ``folder/img``."""
    rows = []
    for i in range(start, start + n):
        png(folder / "img" / f"{i}.png", (i * 20 % 255, 10, 10))
        rows.append({"id": i, "img": f"img/{i}.png", "label": i % 2, "text": f"a dog on the grass {i}", **extra})
    return rows


def dm_of(**kwargs: Any) -> MultimodalDataModule:
    dm = MultimodalDataModule(**{"tokenizer": "tiny-bert", "image_size": 16, "batch_size": 4, **kwargs})
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------------------ readers
def test_generic_jsonl_fields_paths_and_ids(tmp_path: Path) -> None:
    png(tmp_path / "pics" / "x.png")
    path = write_jsonl(tmp_path / "d" / "train.jsonl", [
        {"key": "a1", "picture": "x.png", "caption": "the cat", "y": 1},
        {"picture": "x.png", "caption": "", "y": ["cat", "dog"]},
    ])
    rows = read_jsonl(path, image_field="picture", text_field="caption", label_field="y", id_field="key",
                      image_dir=tmp_path / "pics")
    assert [r.id for r in rows] == ["a1", "train.jsonl:2"]
    assert rows[0].image == tmp_path / "pics" / "x.png" and rows[0].text == "the cat" and rows[0].label == 1
    assert rows[1].where == f"{path}:2" and rows[1].label == ["cat", "dog"] and rows[1].planted is None
    default = read_jsonl(write_jsonl(tmp_path / "e" / "t.jsonl", [{"img": "img/1.png", "text": "t", "label": 0}]))
    assert default[0].image == tmp_path / "e" / "img" / "1.png"  # relative to the JSONL's folder


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "t", "label": 0}, r"t\.jsonl:2: field 'img' must be an image path.*missing"),
    ({"img": "a.png", "label": 0}, r"t\.jsonl:2: field 'text' must be a string.*missing"),
    ({"img": "a.png", "text": 3, "label": 0}, r"t\.jsonl:2: field 'text' must be a string.*got int"),
    ({"img": "a.png", "text": "t"}, r"t\.jsonl:2: missing field 'label'"),
    ({"img": "a.png", "text": "t", "label": 0, "planted": "audio"}, r"t\.jsonl:2: field 'planted' must be one of"),
    ({"img": "a.png", "text": "t", "label": 0, "planted": [0]}, r"t\.jsonl:2: field 'planted' must be one of"),
])
def test_generic_jsonl_errors_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"img": "a.png", "text": "ok", "label": 1}, row])
    with pytest.raises(DataError, match=message):
        read_jsonl(path)


def test_planted_must_be_in_every_row_or_none(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"img": "a.png", "text": "a", "label": 0, "planted": "image"},
                                               {"img": "a.png", "text": "b", "label": 0, "planted": 1},
                                               {"img": "a.png", "text": "c", "label": 1}])
    with pytest.raises(DataError, match=r"t\.jsonl:3: field 'planted' is in some rows"):
        read_jsonl(path)
    ok = write_jsonl(tmp_path / "u.jsonl", [{"img": "a.png", "text": "a", "label": 0, "planted": "both"},
                                             {"img": "a.png", "text": "b", "label": 0, "planted": 1}])
    assert [r.planted for r in read_jsonl(ok)] == [2, 1]


def test_hateful_memes_layout(tmp_path: Path, tiny: Any) -> None:
    hm = tmp_path / "hm"
    write_jsonl(hm / "train.jsonl", memes(hm, 6))
    write_jsonl(hm / "dev_unseen.jsonl", memes(hm, 3, start=6))
    dm = dm_of(format="hateful_memes", data_dir=str(hm))
    assert set(dm.datasets) == {"train", "val"}  # no test_unseen.jsonl: no test split
    assert (dm.num_labels, dm.label_names, dm.multi_label, dm.skipped) == (2, ["0", "1"], False,
                                                                           {"train": 0, "val": 0})
    assert dm.test_dataloader() == []
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["6", "7", "8"] and batch["labels"].tolist() == [0, 1, 0]
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    write_jsonl(hm / "test_unseen.jsonl", memes(hm, 2, start=9))
    assert len(dm_of(format="hateful_memes", data_dir=str(hm)).datasets["test"]) == 2
    with pytest.raises(DataError, match=r"hm/nope\.jsonl: no such file"):
        dm_of(format="hateful_memes", data_dir=str(hm), val_file="nope.jsonl")


def mmimdb(folder: Path, movies: dict[str, tuple[list[str], list[str]]], split: dict[str, list[str]]) -> Path:
    for mid, (plots, genres) in movies.items():
        png(folder / "dataset" / f"{mid}.jpeg")  # PIL reads by content, not by suffix
        (folder / "dataset" / f"{mid}.json").write_text(json.dumps({"plot": plots, "genres": genres, "title": mid}))
    (folder / "split.json").write_text(json.dumps(split))
    return folder


def test_mmimdb_multi_hot_labels(tmp_path: Path) -> None:
    movies = {"0001": (["A heist.", "Longer plot."], ["Drama", "Crime"]), "0002": (["Space."], ["Sci-Fi"]),
              "0003": (["Love."], ["Romance", "Drama"]), "0004": (["Ghosts."], ["Horror"])}
    folder = mmimdb(tmp_path / "mmimdb", movies, {"train": ["0001", "0002", "0003"], "dev": ["0003"], "test": []})
    rows = read_mmimdb(folder, "train")
    assert [(r.id, r.text, r.label) for r in rows][0] == ("0001", "A heist.", ["Drama", "Crime"])
    assert read_mmimdb(folder, "train", plot="join")[0].text == "A heist. Longer plot."
    dm = dm_of(format="mmimdb", data_dir=str(folder))
    assert dm.multi_label and dm.label_names == MMIMDB_GENRES and len(MMIMDB_GENRES) == 23  # the benchmark's genres
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (1, 23)
    assert [MMIMDB_GENRES[i] for i in batch["labels"][0].nonzero().flatten().tolist()] == ["Drama", "Romance"]
    assert len(dm.datasets["test"]) == 0
    (folder / "dataset" / "0001.json").write_text(json.dumps({"plot": ["A heist."], "genres": ["Drama", "News"]}))
    with pytest.warns(UserWarning, match="dropped 1 class names outside"):  # a rarer IMDb genre: dropped, counted
        dm = dm_of(format="mmimdb", data_dir=str(folder))
    # with classes of one's own, an unknown genre is an error naming the file and field, unless ignored
    (folder / "split.json").write_text(json.dumps({"train": ["0001", "0002"], "dev": ["0004"]}))
    own = ["Crime", "Drama", "News", "Sci-Fi"]
    with pytest.raises(DataError, match=r"dataset/0004\.json: field 'genres': unknown class 'Horror'"):
        dm_of(format="mmimdb", data_dir=str(folder), labels=own)
    with pytest.warns(UserWarning, match="dropped 1 class names outside"):
        dm = dm_of(format="mmimdb", data_dir=str(folder), labels=own, unknown_labels="ignore")
    assert dm.datasets["val"].examples[0].label == [0, 0, 0, 0]
    dm = dm_of(format="mmimdb", data_dir=str(folder), labels=["Crime", "Drama", "Horror", "Sci-Fi"],
               unknown_labels="ignore")
    assert dm.datasets["val"].examples[0].label == [0, 0, 1, 0]
    (folder / "dataset" / "0002.json").write_text(json.dumps({"plot": [], "genres": ["Sci-Fi"]}))
    with pytest.raises(DataError, match=r"dataset/0002\.json: field 'plot' must be a non-empty list"):
        read_mmimdb(folder, "train")


def test_snli_ve_label_mapping(tmp_path: Path) -> None:
    flickr = tmp_path / "flickr"
    png(flickr / "111.jpg")
    png(flickr / "222.jpg", (0, 0, 200))
    rows = [{"Flikr30kID": "111.jpg", "sentence1": "A dog runs.", "sentence2": "a dog", "gold_label": g,
             "pairID": f"p{i}"} for i, g in enumerate(["contradiction", "entailment", "neutral"])]
    write_jsonl(tmp_path / "ve" / "snli_ve_train.jsonl", rows)
    write_jsonl(tmp_path / "ve" / "snli_ve_dev.jsonl", [{**rows[0], "Flikr30kID": "222.jpg", "gold_label": "neutral"}])
    read = read_snli_ve(tmp_path / "ve", "train", flickr)
    assert [(r.id, r.text, r.image.name) for r in read][0] == ("p0", "a dog", "111.jpg")
    dm = dm_of(format="snli_ve", data_dir=str(tmp_path / "ve"), image_dir=str(flickr))
    assert dm.label_names == ["entailment", "neutral", "contradiction"] and not dm.multi_label
    assert [e.label for e in dm.datasets["train"].examples] == [2, 0, 1]
    assert next(iter(dm.val_dataloader()))["labels"].tolist() == [1]
    write_jsonl(tmp_path / "ve" / "snli_ve_dev.jsonl", [{**rows[0], "gold_label": "-"}])
    with pytest.raises(DataError, match=r"snli_ve_dev\.jsonl:1: field 'gold_label': unknown class '-'"):
        dm_of(format="snli_ve", data_dir=str(tmp_path / "ve"), image_dir=str(flickr))
    with pytest.raises(DataError, match=r"snli_ve_train\.jsonl:1: field 'Flikr30kID': image .*ve/flickr30k_images/"
                                        r"111\.jpg: no such file \(3 of 3 rows"):
        dm_of(format="snli_ve", data_dir=str(tmp_path / "ve"))  # default image_dir: <data_dir>/flickr30k_images


# ------------------------------------------------------------------------------------------------ labels
def row(label: Any, where: str = "f.jsonl:1") -> Any:
    from datamodules.multimodal import MultimodalRow

    return MultimodalRow("i", Path("x.png"), "t", label, where, "label", None)


def test_label_resolution() -> None:
    assert resolve_labels([row(0), row(2), row(1)]) == (["0", "1", "2"], False)
    assert resolve_labels([row("b"), row("a")]) == (["a", "b"], False)
    assert resolve_labels([row(["b"]), row([]), row(["c", "a"])]) == (["a", "b", "c"], True)
    assert resolve_labels([row([0, 1, 1]), row([1, 0, 0])]) == (["0", "1", "2"], True)
    assert resolve_labels([row(1)], labels=["no", "yes"], multi_label=True) == (["no", "yes"], True)
    with pytest.raises(DataError, match=r"f\.jsonl:2: field 'label' is a list, but multi_label=False"):
        resolve_labels([row(0), row(["a"], "f.jsonl:2")], multi_label=False)
    with pytest.raises(DataError, match="mix class indices and class names"):
        resolve_labels([row(0), row(1), row("a")])
    with pytest.raises(DataError, match="multi-hot lists of different lengths"):
        resolve_labels([row([0, 1]), row([1, 0, 0])])
    with pytest.raises(DataError, match=r"f\.jsonl:1: field 'label' must be a class index"):
        resolve_labels([row(-1)])
    with pytest.raises(DataError, match=r"a list label must hold class names or 0/1"):
        resolve_labels([row([0, 2])])


def test_label_errors_at_setup(tmp_path: Path) -> None:
    rows = memes(tmp_path, 3)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", [{**rows[0], "label": 5}])
    with pytest.raises(DataError, match=r"val\.jsonl:1: field 'label' is 5, but there are 2 classes"):
        dm_of(train_file=str(train), val_file=str(val))
    write_jsonl(val, [{**rows[0], "label": [0, 1, 1]}])
    with pytest.raises(DataError, match=r"val\.jsonl:1: field 'label' is a list, but multi_label=False"):
        dm_of(train_file=str(train), val_file=str(val))


# ------------------------------------------------------------------------------------------------ images
def test_missing_image_fails_at_setup_with_file_and_line(tmp_path: Path) -> None:
    rows = memes(tmp_path, 4)
    (tmp_path / "img" / "2.png").unlink()
    (tmp_path / "img" / "3.png").unlink()
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{train}:3: field 'img': image {tmp_path / 'img' / '2.png'}: "
                                                  "no such file (2 of 4 rows")):
        dm_of(train_file=str(train))


def test_corrupt_image_fails_when_loaded_with_file_and_line(tmp_path: Path) -> None:
    rows = memes(tmp_path, 3)
    (tmp_path / "img" / "1.png").write_bytes(b"not a png at all")
    whole = (tmp_path / "img" / "2.png").read_bytes()
    (tmp_path / "img" / "2.png").write_bytes(whole[: len(whole) // 2])  # truncated
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = dm_of(train_file=str(train))  # existence is all that setup checks in "error" mode
    assert dm.datasets["train"][0][0].shape == (3, 16, 16)
    for i in (1, 2):
        with pytest.raises(DataError, match=re.escape(f"{train}:{i + 1}: image {tmp_path / 'img' / f'{i}.png'} "
                                                      "cannot be decoded")):
            dm.datasets["train"][i]


def test_bad_images_skip_counts_and_warns_once(tmp_path: Path) -> None:
    rows = memes(tmp_path, 8)
    (tmp_path / "img" / "1.png").unlink()
    (tmp_path / "img" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "img" / "6.png").write_bytes(b"")
    train = write_jsonl(tmp_path / "train.jsonl", rows[:5])
    val = write_jsonl(tmp_path / "val.jsonl", rows[5:])
    with pytest.warns(UserWarning, match=r"skipped 3 rows .*\(train 2, val 1\); first: .*train\.jsonl:2: image") as w:
        dm = dm_of(train_file=str(train), val_file=str(val), bad_images="skip")
    assert len([x for x in w if "skipped" in str(x.message)]) == 1
    assert dm.skipped == {"train": 2, "val": 1}
    assert [e.id for e in dm.datasets["train"].examples] == ["0", "3", "4"]
    assert [e.id for e in dm.datasets["val"].examples] == ["5", "7"]


def test_transforms_normalize_and_resize(tmp_path: Path) -> None:
    png(tmp_path / "img" / "0.png", (255, 0, 128), size=10)
    train = write_jsonl(tmp_path / "t.jsonl", [{"id": 0, "img": "img/0.png", "text": "a", "label": 0},
                                               {"id": 1, "img": "img/0.png", "text": "b", "label": 1}])
    dm = dm_of(train_file=str(train), image_size=24, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    pixels = dm.datasets["train"][0][0]  # (3, 24, 24)
    assert pixels.shape == (3, 24, 24) and pixels.dtype == torch.float32
    expected = torch.tensor([255, 0, 128]) / 255 * 2 - 1
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)
    default = dm_of(train_file=str(train)).datasets["train"][0][0]  # ImageNet statistics
    torch.testing.assert_close(default[:, 0, 0], (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(
        [0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ batches
def test_batches_with_the_tiny_tokenizer_end_to_end(tiny: Any) -> None:
    dm = dm_of(train_file=str(SYNTHETIC / "train.jsonl"), val_file=str(SYNTHETIC / "val.jsonl"),
               test_file=str(SYNTHETIC / "test.jsonl"), image_size=32, batch_size=8, max_length=32)
    assert (dm.num_labels, dm.label_names, dm.multi_label) == (2, ["0", "1"], False)
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 600, "val": 200, "test": 200}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "ids", "index", "planted"}
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (8, 3, 32, 32)
    b, t = batch["input_ids"].shape
    assert b == 8 and t <= 32 and batch["input_ids"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.int64 and batch["attention_mask"].shape == (8, t)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (8,)
    assert batch["planted"].dtype == torch.int64 and set(batch["planted"].tolist()) <= {0, 1, 2}
    assert len(batch["ids"]) == 8 and all(isinstance(i, str) for i in batch["ids"])
    # no specials of its own: BOS text EOS, then right padding
    lengths = batch["attention_mask"].sum(1)
    for i in range(b):
        n = int(lengths[i])
        assert batch["input_ids"][i, 0] == tiny.bos_token_id and batch["input_ids"][i, n - 1] == tiny.eos_token_id
        assert (batch["input_ids"][i, n:] == tiny.pad_token_id).all() and not batch["attention_mask"][i, n:].any()
    val = next(iter(dm.val_dataloader()))
    rows = [json.loads(x) for x in (SYNTHETIC / "val.jsonl").read_text().splitlines()[:8]]
    assert val["ids"] == [r["id"] for r in rows]
    assert val["planted"].tolist() == [synth.PLANTED_NAMES.index(r["planted"]) for r in rows]
    assert val["labels"].tolist() == [r["label"] for r in rows]
    pickle.loads(pickle.dumps(dm.datasets["train"]))  # worker processes get a copy


def test_bert_style_tokens_and_multi_label_collate(tmp_path: Path, bert: Any) -> None:
    rows = memes(tmp_path, 3)
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = ["dog"], ["cat", "dog"], []
    rows[0]["text"], rows[1]["text"], rows[2]["text"] = "a dog on the grass " * 10, "a cat", ""
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = MultimodalDataModule(train_file=str(train), image_size=8, max_length=6, shuffle=False)
    dm._tokenizer = bert
    with pytest.warns(UserWarning, match="1 texts were cut to max_length=6"):
        dm.setup("fit")
    items = [dm.datasets["train"][i] for i in range(3)]
    batch = collate_multimodal(items, pad_id=bert.pad_token_id)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "token_type_ids", "labels", "ids", "index"}
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [[0, 1], [1, 1], [0, 0]]
    cls, sep = bert.cls_token_id, bert.sep_token_id
    assert batch["input_ids"][0].tolist() == [cls, *bert.convert_tokens_to_ids(["a", "dog", "on", "the"]), sep]
    assert batch["token_type_ids"].dtype == torch.int64 and batch["token_type_ids"].shape == (3, 6)
    assert batch["input_ids"][1, -1] == bert.pad_token_id and batch["attention_mask"][1, -1] == 0


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_file"):
        MultimodalDataModule()
    with pytest.raises(ConfigError, match="needs data_dir"):
        MultimodalDataModule(format="mmimdb")
    with pytest.raises(ConfigError, match="drop train_file"):
        MultimodalDataModule(format="snli_ve", data_dir="x", train_file="t.jsonl")
    with pytest.raises(ConfigError, match="bad_images"):
        MultimodalDataModule(train_file="t.jsonl", bad_images="warn")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="setup"):
        _ = MultimodalDataModule(train_file="t.jsonl").num_labels


# ------------------------------------------------------------------------------------------------ synthetic
def shape_in(path: Path) -> str:
    """The shape drawn in a synthetic image, read off its pixels: foreground share of the shape's bounding box."""
    img = Image.open(path).convert("RGB")
    background = max(img.getcolors())[1]  # the majority colour
    fg = (np.asarray(img) != np.array(background)).any(-1)  # (H, W)
    ys, xs = np.nonzero(fg)
    fill = fg.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"


def test_synthetic_label_is_carried_by_the_planted_modality() -> None:
    cue_class = {w: k for k, words in enumerate(synth.CUE_WORDS) for w in words}
    meta = json.loads((SYNTHETIC / "meta.json").read_text())
    assert meta["num_classes"] == 2 and meta["class_shapes"] == ["circle", "square"]
    for split, n in (("train", 600), ("val", 200), ("test", 200)):
        rows = [json.loads(x) for x in (SYNTHETIC / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n
        counts = {p: sum(r["planted"] == p for r in rows) for p in synth.PLANTED_NAMES}
        assert counts == {"image": round(0.4 * n), "text": round(0.4 * n), "both": n - 2 * round(0.4 * n)}
        assert {r["label"] for r in rows} == {0, 1}
        for r in rows:
            shape = shape_in(SYNTHETIC / r["img"])
            cues = [cue_class[w] for w in r["text"].split() if w in cue_class]
            assert shape == r["shape"]
            if r["planted"] in ("image", "both"):
                assert shape == synth.CLASS_SHAPES[r["label"]], r["id"]
            else:
                assert shape == synth.NEUTRAL_SHAPE, r["id"]
            assert cues == ([r["label"]] if r["planted"] in ("text", "both") else []), r["id"]
            assert Image.open(SYNTHETIC / r["img"]).size == (meta["image_size"], meta["image_size"])


def test_synthetic_is_deterministic_and_committed_set_matches(tmp_path: Path) -> None:
    synth.main(["--out", str(tmp_path / "a")])
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_text() == (SYNTHETIC / f"{split}.jsonl").read_text()
    assert json.loads((tmp_path / "a" / "meta.json").read_text()) == json.loads((SYNTHETIC / "meta.json").read_text())
    for name in sorted(p.name for p in (SYNTHETIC / "img").iterdir())[::25]:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "img" / name)),
                              np.asarray(Image.open(SYNTHETIC / "img" / name)))
    small = synth.make_examples(30, seed=1, num_classes=4, p_image=0.5, p_text=0.2, image_size=20, stream="x")
    assert small == synth.make_examples(30, seed=1, num_classes=4, p_image=0.5, p_text=0.2, image_size=20, stream="x")
    assert small != synth.make_examples(30, seed=2, num_classes=4, p_image=0.5, p_text=0.2, image_size=20, stream="x")
    assert [sum(r["planted"] == p for r, _ in small) for p in synth.PLANTED_NAMES] == [15, 6, 9]
    for r, drawing in small:
        assert drawing.shape == (synth.CLASS_SHAPES[r["label"]] if r["planted"] != "text" else synth.NEUTRAL_SHAPE)
        assert synth.render(drawing, 20).size == (20, 20)
    with pytest.raises(ValueError, match="num_classes"):
        synth.make_examples(3, seed=0, num_classes=5)
    synth.main(["--out", str(tmp_path / "a"), "--n-train", "4", "--n-val", "2", "--n-test", "0"])  # replaced whole
    assert len(list((tmp_path / "a" / "img").iterdir())) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_heldout_split_and_row_fingerprint(tiny: Any) -> None:
    """``heldout_fraction`` sets a seeded share of the training rows aside (indices kept, eval transform); the
    fingerprint names the rows, not the tokens or image size, and changes with any row's content."""
    def module(**kwargs: Any) -> MultimodalDataModule:
        dm = MultimodalDataModule(train_file=str(SYNTHETIC / "train.jsonl"), image_size=16, **kwargs)
        dm._tokenizer = tiny
        dm.setup("fit")
        return dm

    dm = module(heldout_fraction=0.1, horizontal_flip=True)
    train, held = dm.datasets["train"].examples, dm.datasets["heldout"].examples
    assert (len(train), len(held)) == (540, 60)
    assert sorted(e.index for e in train + held) == list(range(600))
    assert [e.index for e in dm.examples("train")] == list(range(600))  # all rows, in order
    assert [e.index for e in module(heldout_fraction=0.1).datasets["heldout"].examples] == [e.index for e in held]
    assert {e.index for e in module(heldout_fraction=0.1, seed=1).datasets["heldout"].examples} != \
        {e.index for e in held}
    def flips(split: str) -> bool:
        return any(isinstance(t, transforms.RandomHorizontalFlip) for t in dm.datasets[split].transform.transforms)

    assert flips("train") and not flips("heldout")  # held-out rows are evaluated, not augmented
    batch = next(iter(dm.heldout_dataloader(rank=1, world_size=2)))
    assert batch["index"].shape == (30,) and set(batch["index"].tolist()) <= {e.index for e in held}
    with pytest.raises(ConfigError, match="heldout_fraction"):
        module().heldout_dataloader()
    plain = module()
    assert plain.fingerprint("train") == dm.fingerprint("train")  # the same rows, held out or not
    bigger = MultimodalDataModule(train_file=str(SYNTHETIC / "train.jsonl"), image_size=32, tokenizer="tiny-bert")
    bigger.setup("fit")
    assert bigger.fingerprint("train") == plain.fingerprint("train")  # not the tokens, not the image size
    first = plain.datasets["train"].examples[0]
    plain.datasets["train"].examples[0] = first._replace(text=first.text + " !")
    assert plain.fingerprint("train") != dm.fingerprint("train")
