"""Vision-language classification data (an image and a text per row) for MSD.

MSD (Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021)
distils a multimodal teacher into a student, with auxiliary per-modality terms weighted by each instance's modality
saliency. This module reads the data, loads and transforms the images, tokenizes the texts and batches them; the
modality removal itself belongs to the LightningModule.

Formats (``format``), each read into rows ``(id, image path, text, label)``; every error names ``file:line`` (or
the file) and the field:

- ``jsonl`` (generic; Hateful Memes' own format): ``{"id": 10423, "img": "img/10423.png", "label": 1,
  "text": "..."}`` with configurable field names. Image paths are relative to ``image_dir`` if given, else to the
  JSONL file's folder (also for ``hateful_memes``), and must stay inside that folder (no ``../`` out of it, no
  absolute path) unless ``allow_outside_root``. A row without an id gets ``<file name>:<line>``; an id given twice in
  a file is an error.
- ``hateful_memes``: ``data_dir`` holding ``train.jsonl``, ``dev_unseen.jsonl``, ``test_unseen.jsonl`` (file
  names overridable by ``train_file`` / ``val_file`` / ``test_file``) beside ``img/``.
- ``mmimdb`` (multi-label genres): ``data_dir`` holding ``split.json`` (``{"train": [ids], "dev": [...], "test":
  [...]}``) and ``dataset/<id>.json`` (``plot``: a list of strings, ``genres``: a list of names) with
  ``dataset/<id>.jpeg``. ``mmimdb_plot``: the first plot (default, our choice) or all joined by spaces.
- ``snli_ve``: ``data_dir`` holding ``snli_ve_{train,dev,test}.jsonl``; the image is ``Flikr30kID`` (sic) inside
  ``image_dir`` (default ``<data_dir>/flickr30k_images``, the SNLI-VE repository's layout), the text is
  ``sentence2`` (the hypothesis), the label ``gold_label``; class order entailment, neutral, contradiction (our
  choice, SNLI's usual order) unless ``labels`` says otherwise; the id is ``pairID`` when present.

The train split is required, val / test are read when present (for MM-IMDB: its ids are listed).

Labels: an int class index or a class name (single-label), or a list of class names or a 0/1 multi-hot list (multi-
label; an int or a name there is a one-class set). ``multi_label=None`` infers multi-label when any training label
is a list. Class names: ``labels`` if given, else ``0..max`` for int labels, else the sorted names seen in training
(MM-IMDB: the benchmark's 23 genres, :data:`MMIMDB_GENRES`, the rarer ones dropped and counted). An unknown name
raises, or with ``unknown_labels="ignore"`` (multi-label only) is dropped and counted. Rows may carry ``planted``
(``"image"`` / ``"text"`` / ``"both"``, or 0 / 1 / 2: the modality that carries the label,
:mod:`datamodules.multimodal_synthetic`) in every row of a split or none.

Images: PIL, converted to RGB, ``Resize((image_size, image_size))`` (square, aspect ratio not kept: our choice, so
that batches stack), an optional random horizontal flip (training only, off by default), ``ToTensor`` and
``Normalize`` (ImageNet statistics by default). ``bad_images="error"`` checks at setup that every image file exists
and raises :class:`DataError` naming the image and ``file:line`` when one is missing or later cannot be decoded;
``"skip"`` decodes every image at setup and drops rows whose image is missing or broken (counts in ``skipped``,
one warning).

Text: the tokenizer's own special tokens when it adds any (BERT: ``[CLS] text [SEP]``, via ``tok(text,
truncation=True, max_length=max_length)``), else ``BOS text EOS`` with whichever exist (the suite's byte-level tiny
tokenizers add none), so position 0 can be pooled and an empty text still has tokens (:class:`TextEncoder`).

Batches (right padding with ``tok.pad_token_id``)::

    pixel_values    float32 (B, 3, H, W)
    input_ids       int64   (B, T)
    attention_mask  int64   (B, T)     1 on real tokens
    token_type_ids  int64   (B, T)     only when the tokenizer makes them
    labels          int64   (B,)       single-label; float32 (B, L) multi-hot for multi-label
    ids             list[str]
    index           int64   (B,)       each row's position among its split's usable rows (keys MSD's teacher cache)
    planted         int64   (B,)       only when rows carry ``planted``: 0 image, 1 text, 2 both
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms

from core.backbones import IMAGENET_MEAN, IMAGENET_STD
from core.chat import TokenizerFromModule
from core.errors import ConfigError, DataError
from core.records import inferred_class_count, iter_jsonl, read_text
from core.text_encoding import TextEncoder
from datamodules.loaders import SplitLoaders

SPLITS = ("train", "val", "test")
Format = Literal["jsonl", "hateful_memes", "mmimdb", "snli_ve"]
PLANTED_CODES = {"image": 0, "text": 1, "both": 2}
HATEFUL_MEMES_FILES = {"train": "train.jsonl", "val": "dev_unseen.jsonl", "test": "test_unseen.jsonl"}
SNLI_VE_LABELS = ["entailment", "neutral", "contradiction"]
# The 23 genres of MM-IMDB's benchmark (Arevalo et al. 2017, "Gated Multimodal Units for Information Fusion"); the
# per-movie files also name rarer IMDb genres (News, Adult, Talk-Show, ...), which the benchmark leaves out.
MMIMDB_GENRES = [
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy",
    "Film-Noir", "History", "Horror", "Music", "Musical", "Mystery", "Romance", "Sci-Fi", "Short", "Sport",
    "Thriller", "War", "Western",
]
DATA_SPLIT = {"train": "train", "val": "dev", "test": "test"}  # our split -> MM-IMDB / SNLI-VE split name


class MultimodalRow(NamedTuple):
    """One row as read; ``label`` is still raw (int, name, list of names or multi-hot list)."""

    id: str
    image: Path
    text: str
    label: Any
    where: str  # "file:line" (or the file) for error messages
    label_field: str
    planted: int | None  # 0 image, 1 text, 2 both; None when the row has no ``planted``


class MultimodalExample(NamedTuple):
    """One row ready to batch: image path, token ids and encoded label. Plain Python values: pickles cheaply."""

    id: str
    image: str
    text: str
    input_ids: list[int]  # (T_i,)
    token_type_ids: list[int] | None  # (T_i,), only when the tokenizer makes them
    label: int | list[int]  # class index, or multi-hot (L,)
    planted: int | None
    where: str
    index: int  # position among its split's kept rows (after bad_images=skip; before rows are held out): 0..N-1


# ------------------------------------------------------------------------------------------------ reading
def _text(row: dict[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        got = "missing" if field not in row else type(value).__name__
        raise DataError(f"{where}: field {field!r} must be a string (the text), got {got}")
    return value


def _planted(row: dict[str, Any], where: str) -> int | None:
    if "planted" not in row:
        return None
    value = row["planted"]
    if isinstance(value, str) and value in PLANTED_CODES:
        return PLANTED_CODES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in PLANTED_CODES.values():
        return value
    raise DataError(f"{where}: field 'planted' must be one of {list(PLANTED_CODES)} or 0 / 1 / 2, got {value!r}")


def _check_planted(rows: list[MultimodalRow], source: str) -> None:
    """``planted`` is in every row of a split or in none (a batch has the key or not)."""
    have = [r.planted is not None for r in rows]
    if any(have) and not all(have):
        first = rows[have.index(not have[0])]
        raise DataError(f"{first.where}: field 'planted' is in some rows of {source} and not others (this row "
                        f"{'has' if first.planted is not None else 'lacks'} it)")


def _check_unique_ids(rows: list[MultimodalRow]) -> None:
    """Ids name rows in predictions and reports: an id given twice in one file is an error naming both rows."""
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        j = first.setdefault(r.id, i)
        if j != i:
            raise DataError(f"{r.where}: duplicate id {r.id!r} (first at {rows[j].where})")


def _under_root(root: Path, name: str, where: str, field: str, allow_outside: bool) -> Path:
    """``root / name``; a name that leaves ``root`` (``../``, an absolute path) is a DataError unless
    ``allow_outside`` (a data file should not make the loader read files elsewhere on the machine)."""
    path = root / name
    if not allow_outside and not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise DataError(f"{where}: field {field!r}: {name!r} points outside the data root {root} (set "
                        "--data.allow_outside_root true to allow it)")
    return path


def read_jsonl(path: str | Path, image_field: str = "img", text_field: str = "text", label_field: str = "label",
               id_field: str = "id", image_dir: str | Path | None = None,
               allow_outside_root: bool = False) -> list[MultimodalRow]:
    """Rows of a generic / Hateful Memes JSONL file; image paths relative to ``image_dir`` or the file's folder
    (and inside it, unless ``allow_outside_root``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    root = Path(image_dir) if image_dir is not None else path.parent
    rows = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        image = row.get(image_field)
        if not isinstance(image, str) or not image:
            got = "missing" if image_field not in row else repr(image)
            raise DataError(f"{where}: field {image_field!r} must be an image path (a non-empty string), got {got}")
        if label_field not in row or row[label_field] is None:
            raise DataError(f"{where}: missing field {label_field!r} (the label)")
        rid = row.get(id_field)
        rid = f"{path.name}:{lineno}" if rid is None else str(rid)
        image_path = _under_root(root, image, where, image_field, allow_outside_root)
        rows.append(MultimodalRow(rid, image_path, _text(row, text_field, where), row[label_field], where,
                                  label_field, _planted(row, where)))
    _check_planted(rows, str(path))
    _check_unique_ids(rows)
    return rows


def read_hateful_memes(data_dir: str | Path, file: str, image_dir: str | Path | None = None,
                       allow_outside_root: bool = False) -> list[MultimodalRow]:
    """A Hateful Memes split file (``train.jsonl``, ``dev_unseen.jsonl``...) of ``data_dir``; ``img`` paths are
    relative to ``image_dir`` (default ``data_dir``: ``img/<id>.png``)."""
    return read_jsonl(Path(data_dir) / file, image_dir=image_dir, allow_outside_root=allow_outside_root)


def _json_object(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None


def mmimdb_split_ids(data_dir: str | Path) -> dict[str, list[str]]:
    """``split.json`` of an MM-IMDB folder: its split name (train / dev / test) -> movie ids (strings)."""
    path = Path(data_dir) / "split.json"
    split = _json_object(path)
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        raise DataError(f"{path}: expected an object with a list 'train' (and 'dev', 'test') of movie ids")
    out = {}
    for name, ids in split.items():
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
            raise DataError(f"{path}: field {name!r} must be a list of movie ids")
        out[name] = [str(i) for i in ids]
        twice = next((i for i, n in Counter(out[name]).items() if n > 1), None)
        if twice is not None:
            raise DataError(f"{path}: field {name!r}: movie id {twice!r} is listed twice")
    return out


def read_mmimdb(data_dir: str | Path, split: str, plot: Literal["first", "join"] = "first",
                ids: list[str] | None = None) -> list[MultimodalRow]:
    """MM-IMDB rows of ``split`` (``train`` / ``dev`` / ``test`` of ``split.json``): the plot and the genres list."""
    folder = Path(data_dir) / "dataset"
    ids = mmimdb_split_ids(data_dir).get(split, []) if ids is None else ids
    rows = []
    for mid in ids:
        path = folder / f"{mid}.json"
        movie = _json_object(path)
        where = str(path)
        if not isinstance(movie, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(movie).__name__}")
        plots = movie.get("plot")
        if isinstance(plots, str):
            plots = [plots]
        if not isinstance(plots, list) or not plots or not all(isinstance(p, str) for p in plots):
            raise DataError(f"{where}: field 'plot' must be a non-empty list of strings")
        genres = movie.get("genres")
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            raise DataError(f"{where}: field 'genres' must be a list of genre names")
        text = plots[0] if plot == "first" else " ".join(plots)
        rows.append(MultimodalRow(mid, folder / f"{mid}.jpeg", text, genres, where, "genres", None))
    return rows


def read_snli_ve(data_dir: str | Path, split: str, image_dir: str | Path | None = None,
                 allow_outside_root: bool = False) -> list[MultimodalRow]:
    """SNLI-VE rows of ``snli_ve_<split>.jsonl``: Flickr30k image, hypothesis ``sentence2``, ``gold_label``."""
    path = Path(data_dir) / f"snli_ve_{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: no such file")
    images = Path(image_dir) if image_dir is not None else Path(data_dir) / "flickr30k_images"
    rows = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        image = row.get("Flikr30kID")
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: field 'Flikr30kID' must be an image file name, got {image!r}")
        label = row.get("gold_label")
        if not isinstance(label, str):
            raise DataError(f"{where}: field 'gold_label' must be one of {SNLI_VE_LABELS}, got {label!r}")
        rid = row.get("pairID")
        image_path = _under_root(images, image, where, "Flikr30kID", allow_outside_root)
        rows.append(MultimodalRow(f"{path.name}:{lineno}" if rid is None else str(rid), image_path,
                                  _text(row, "sentence2", where), label, where, "gold_label", None))
    _check_unique_ids(rows)
    return rows


# ------------------------------------------------------------------------------------------------ labels
def _kind(value: Any, row: MultimodalRow) -> str:
    """``index``, ``name``, ``names`` or ``multi_hot``; anything else raises."""
    if isinstance(value, bool) or (isinstance(value, int) and value >= 0):
        return "index"
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return "index"
    if isinstance(value, str):
        return "name"
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "names"  # an empty list too: no class
        if all(isinstance(v, (bool, int)) and v in (0, 1) for v in value):
            return "multi_hot"
        raise DataError(f"{row.where}: field {row.label_field!r}: a list label must hold class names or 0/1 "
                        f"(multi-hot), got {value!r}")
    raise DataError(f"{row.where}: field {row.label_field!r} must be a class index (int >= 0), a class name, or a "
                    f"list (multi-label), got {value!r}")


def resolve_labels(train: Sequence[MultimodalRow], labels: list[str] | None = None,
                   multi_label: bool | None = None) -> tuple[list[str], bool]:
    """``(class names, multi_label)`` from the training rows (rules in the module docstring)."""
    kinds = [_kind(r.label, r) for r in train]
    lists = [i for i, k in enumerate(kinds) if k in ("names", "multi_hot")]
    multi = bool(lists) if multi_label is None else multi_label
    if not multi and lists:
        r = train[lists[0]]
        raise DataError(f"{r.where}: field {r.label_field!r} is a list, but multi_label=False")
    hot = [i for i, k in enumerate(kinds) if k == "multi_hot"]
    named = [i for i, k in enumerate(kinds) if k in ("name", "names")]
    if hot and named:
        r = train[named[0]]
        raise DataError(f"{r.where}: field {r.label_field!r}: class names mixed with multi-hot lists "
                        f"(e.g. {train[hot[0]].where})")
    if hot:
        widths = {len(train[i].label) for i in hot}
        if len(widths) > 1:
            raise DataError(f"{train[hot[0]].where}: field {train[hot[0]].label_field!r}: multi-hot lists of "
                            f"different lengths {sorted(widths)}")
    if labels is not None:
        if len(set(labels)) != len(labels) or len(labels) < 1:
            raise ConfigError(f"labels must be distinct class names, got {labels}")
        return list(labels), multi
    if hot:
        return [str(i) for i in range(widths.pop())], multi
    indices = [i for i, k in enumerate(kinds) if k == "index"]
    if indices and named:
        r = train[named[0]] if len(named) < len(indices) else train[indices[0]]
        raise DataError(f"{r.where}: field {r.label_field!r}: the training labels mix class indices and class "
                        "names (give `labels` to name the indices)")
    if indices:
        count = inferred_class_count(((train[i].label, train[i].where) for i in indices), train[indices[0]].label_field,
                                     "give `labels` to name classes that training lacks")
        return [str(i) for i in range(count)], multi
    names = {n for r in train for n in ([r.label] if isinstance(r.label, str) else r.label)}
    if not names:
        raise DataError(f"{train[0].where}: no class names in the training labels (give `labels`)")
    return sorted(names), multi


def encode_label(row: MultimodalRow, names: list[str], multi_label: bool,
                 unknown: Literal["error", "ignore"] = "error") -> tuple[int | list[int], int]:
    """``(class index or multi-hot list, unknown names dropped)`` of one row."""
    value, kind = row.label, _kind(row.label, row)
    field, n = row.label_field, len(names)

    def index(name: str) -> int | None:
        if name in names:
            return names.index(name)
        if multi_label and unknown == "ignore":
            return None
        raise DataError(f"{row.where}: field {field!r}: unknown class {name!r} (known: {', '.join(names)})")

    def checked(k: Any) -> int:
        if int(k) >= n:
            raise DataError(f"{row.where}: field {field!r} is {k}, but there are {n} classes")
        return int(k)

    if not multi_label:
        if kind == "index":
            return checked(value), 0
        if kind == "name":
            return index(value), 0  # type: ignore[return-value]  # single-label: never None
        raise DataError(f"{row.where}: field {field!r} is a list, but multi_label=False")
    if kind == "multi_hot":
        if len(value) != n:
            raise DataError(f"{row.where}: field {field!r}: multi-hot list of length {len(value)}, expected {n}")
        return [int(v) for v in value], 0
    found = [checked(value)] if kind == "index" else [index(v) for v in ([value] if kind == "name" else value)]
    hot = [0] * n
    for k in found:
        if k is not None:
            hot[k] = 1
    return hot, sum(k is None for k in found)


# ------------------------------------------------------------------------------------------------ images
def build_transform(image_size: int, train: bool, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, horizontal_flip: bool = False) -> Callable[[Any], Any]:
    """PIL image -> float32 (3, image_size, image_size): resize, (flip: training only), to tensor, normalize."""
    steps: list[Any] = [transforms.Resize((image_size, image_size))]
    if train and horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    return transforms.Compose(steps)


_DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # PIL: UnidentifiedImageError, truncated data, bad headers


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")  # decodes the whole image: truncated files fail here


def load_image(path: str | Path, where: str) -> Image.Image:
    """The decoded RGB image; a missing or undecodable file raises :class:`DataError` naming it and ``where``."""
    try:
        return _open_rgb(path)
    except FileNotFoundError:
        raise DataError(f"{where}: image {path}: no such file") from None
    except _DECODE_ERRORS as e:
        raise DataError(f"{where}: image {path} cannot be decoded ({e})") from None


def image_problem(path: Path, decode: bool, cache: dict[Path, str | None]) -> str | None:
    """Why ``path`` is unusable (missing, or with ``decode`` not decodable), or None; cached per path."""
    if path not in cache:
        problem = None
        if not path.is_file():
            problem = "no such file"
        elif decode:
            try:
                _open_rgb(path)
            except _DECODE_ERRORS as e:
                problem = f"cannot be decoded ({e})"
        cache[path] = problem
    return cache[path]


class MultimodalDataset(Dataset):
    """Examples whose images are loaded and transformed on access: item = (pixels (3, H, W), example)."""

    def __init__(self, examples: list[MultimodalExample], transform: Callable[[Any], Any]) -> None:
        self.examples, self.transform = examples, transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, MultimodalExample]:
        e = self.examples[i]
        return self.transform(load_image(e.image, e.where)), e  # (3, H, W)


def collate_multimodal(items: Sequence[tuple[torch.Tensor, MultimodalExample]], pad_id: int) -> dict[str, Any]:
    """Stacked images, right-padded tokens and labels: the batch contract of the module docstring."""
    examples = [e for _, e in items]
    b, t = len(examples), max(len(e.input_ids) for e in examples)
    ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(b, t, dtype=torch.long)  # (B, T)
    types = torch.zeros(b, t, dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        if e.token_type_ids is not None:
            types[i, :n] = torch.tensor(e.token_type_ids, dtype=torch.long)
    multi = isinstance(examples[0].label, list)
    labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if multi else torch.long)  # (B, L) | (B,)
    batch: dict[str, Any] = {
        "pixel_values": torch.stack([p for p, _ in items]).float(),  # (B, 3, H, W)
        "input_ids": ids,
        "attention_mask": mask,
    }
    if examples[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    batch["labels"] = labels
    batch["ids"] = [e.id for e in examples]
    batch["index"] = torch.tensor([e.index for e in examples], dtype=torch.long)  # (B,)
    if examples[0].planted is not None:
        batch["planted"] = torch.tensor([e.planted for e in examples], dtype=torch.long)  # (B,)
    return batch


# -------------------------------------------------------------------------------------------- datamodule
class MultimodalDataModule(TokenizerFromModule, SplitLoaders, LightningDataModule):
    """Image + text classification (generic JSONL, Hateful Memes, MM-IMDB, SNLI-VE) for MSD.

    Args:
        format: which reader (module docstring). ``jsonl`` takes ``train_file`` (required) / ``val_file`` /
            ``test_file``; the others take ``data_dir`` (Hateful Memes: the ``*_file`` names override its defaults).
        image_dir: ``jsonl`` / ``hateful_memes``: root of relative image paths (default: the JSONL file's folder);
            ``snli_ve``: the Flickr30k images (default ``<data_dir>/flickr30k_images``).
        image_field, text_field, label_field, id_field: ``jsonl`` field names.
        labels: class names in index order; None infers them (module docstring).
        multi_label: None = inferred (any list label in train -> multi-label).
        unknown_labels: multi-label only: an unknown class name raises (``error``) or is dropped (``ignore``).
        mmimdb_plot: MM-IMDB text: the ``first`` plot or all plots ``join``-ed.
        image_size, image_mean, image_std, horizontal_flip: image transforms (flip: training only).
        bad_images: ``error`` (check files exist at setup, raise on a broken one when loaded) or ``skip`` (decode all
            at setup, drop rows with missing or broken images, counted in ``skipped``).
        max_length: tokens per text, special tokens included.
        heldout_fraction: a seeded share of the training rows set aside as split ``heldout`` (not trained on; MSD's
            learned weights are fitted on it, :meth:`heldout_dataloader`).
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's ``.tokenizer``.
        allow_outside_root: let image paths leave their root (``image_dir`` / the JSONL file's folder / SNLI-VE's
            image folder) by ``../`` or an absolute path; off, such a row is a DataError naming it.

    After ``setup``: ``num_labels``, ``label_names``, ``multi_label``, ``datasets`` (split ->
    :class:`MultimodalDataset`) and ``skipped`` (split -> rows dropped for their image).
    """

    def __init__(
        self,
        format: Format = "jsonl",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        data_dir: str | None = None,
        image_dir: str | None = None,
        image_field: str = "img",
        text_field: str = "text",
        label_field: str = "label",
        id_field: str = "id",
        labels: list[str] | None = None,
        multi_label: bool | None = None,
        unknown_labels: Literal["error", "ignore"] = "error",
        mmimdb_plot: Literal["first", "join"] = "first",
        image_size: int = 64,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        horizontal_flip: bool = False,
        bad_images: Literal["error", "skip"] = "error",
        max_length: int = 64,
        heldout_fraction: float = 0.0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        tokenizer: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if format not in ("jsonl", "hateful_memes", "mmimdb", "snli_ve"):
            raise ConfigError(f"format must be jsonl, hateful_memes, mmimdb or snli_ve, got {format!r}")
        if format == "jsonl" and (train_file is None or data_dir is not None):
            raise ConfigError("format='jsonl' takes train_file (and val_file / test_file), not data_dir")
        if format != "jsonl" and data_dir is None:
            raise ConfigError(f"format={format!r} needs data_dir (the dataset folder)")
        if format in ("mmimdb", "snli_ve") and any(f is not None for f in (train_file, val_file, test_file)):
            raise ConfigError(f"format={format!r} reads its split files from data_dir; drop train_file / val_file / "
                              "test_file")
        if format == "mmimdb" and image_dir is not None:
            raise ConfigError("format='mmimdb' keeps its images in <data_dir>/dataset; drop image_dir")
        if bad_images not in ("error", "skip"):
            raise ConfigError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        if unknown_labels not in ("error", "ignore"):
            raise ConfigError(f"unknown_labels must be 'error' or 'ignore', got {unknown_labels!r}")
        if mmimdb_plot not in ("first", "join"):
            raise ConfigError(f"mmimdb_plot must be 'first' or 'join', got {mmimdb_plot!r}")
        if image_size < 1 or len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ConfigError("image_size must be >= 1; image_mean / image_std need 3 values, std > 0")
        if max_length < 4:
            raise ConfigError(f"max_length must be >= 4, got {max_length}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("batch_size and eval_batch_size must be >= 1")
        self._datasets: dict[str, MultimodalDataset] | None = None
        self._label_names: list[str] = []
        self._multi_label = False
        self.skipped: dict[str, int] = {}

    def read_rows(self) -> dict[str, list[MultimodalRow]]:
        """The rows of each present split (train required)."""
        h = self.hparams
        rows: dict[str, list[MultimodalRow]] = {}
        if h.format == "jsonl":
            fields = dict(image_field=h.image_field, text_field=h.text_field, label_field=h.label_field,
                          id_field=h.id_field, image_dir=h.image_dir)
            for split, file in zip(SPLITS, (h.train_file, h.val_file, h.test_file), strict=True):
                if file is not None:
                    rows[split] = read_jsonl(file, **fields, allow_outside_root=h.allow_outside_root)
        elif h.format == "hateful_memes":
            given = {"train": h.train_file, "val": h.val_file, "test": h.test_file}
            for split in SPLITS:
                name = given[split] or HATEFUL_MEMES_FILES[split]
                if split == "train" or given[split] is not None or (Path(h.data_dir) / name).exists():
                    rows[split] = read_hateful_memes(h.data_dir, name, h.image_dir, h.allow_outside_root)
        elif h.format == "mmimdb":
            ids = mmimdb_split_ids(h.data_dir)
            for split in SPLITS:
                if DATA_SPLIT[split] in ids:
                    rows[split] = read_mmimdb(h.data_dir, DATA_SPLIT[split], h.mmimdb_plot, ids[DATA_SPLIT[split]])
        else:
            for split in SPLITS:
                if split == "train" or (Path(h.data_dir) / f"snli_ve_{DATA_SPLIT[split]}.jsonl").exists():
                    rows[split] = read_snli_ve(h.data_dir, DATA_SPLIT[split], h.image_dir, h.allow_outside_root)
        if not rows["train"]:
            raise DataError(f"{h.train_file or h.data_dir}: no training rows")
        return rows

    def _check_images(self, split: str, rows: list[MultimodalRow], cache: dict[Path, str | None],
                      bad: list[str]) -> list[MultimodalRow]:
        """The rows whose image is usable; raises (``error``) or drops and records (``skip``) the others."""
        skip = self.hparams.bad_images == "skip"
        kept, missing = [], []
        for r in rows:
            problem = image_problem(r.image, decode=skip, cache=cache)
            if problem is None:
                kept.append(r)
            elif skip:
                bad.append(f"{r.where}: image {r.image}: {problem}")
            else:
                missing.append(r)
        if missing:
            first = missing[0]
            more = f" ({len(missing)} of {len(rows)} rows of split {split!r} lack their image)" if missing[1:] else ""
            raise DataError(f"{first.where}: field {self._image_field()!r}: image {first.image}: no such file{more}; "
                            "bad_images='skip' drops such rows")
        self.skipped[split] = len(rows) - len(kept)
        return kept

    def _image_field(self) -> str:
        return {"jsonl": self.hparams.image_field, "hateful_memes": "img", "mmimdb": "dataset/<id>.jpeg",
                "snli_ve": "Flikr30kID"}[self.hparams.format]

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        h = self.hparams
        rows = self.read_rows()
        cache: dict[Path, str | None] = {}
        bad: list[str] = []
        rows = {split: self._check_images(split, split_rows, cache, bad) for split, split_rows in rows.items()}
        if bad:
            counts = ", ".join(f"{s} {n}" for s, n in self.skipped.items() if n)
            rank_zero_warn(f"skipped {len(bad)} rows whose image is missing or cannot be decoded ({counts}); "
                           f"first: {bad[0]}")
        if not rows["train"]:
            raise DataError(f"{h.train_file or h.data_dir}: no training rows with a usable image")
        default_labels = {"snli_ve": SNLI_VE_LABELS, "mmimdb": MMIMDB_GENRES}.get(h.format)
        names, multi = resolve_labels(rows["train"], h.labels or default_labels, h.multi_label)
        # MM-IMDB with its benchmark genres: the rarer IMDb genres are dropped (counted), not an error
        unknown = "ignore" if h.format == "mmimdb" and h.labels is None else h.unknown_labels
        encoder = TextEncoder(self.tokenizer, h.max_length)
        datasets, dropped = {}, 0
        for split, split_rows in rows.items():
            examples = []
            for i, r in enumerate(split_rows):
                label, lost = encode_label(r, names, multi, unknown)
                dropped += lost
                ids, types = encoder(r.text)
                examples.append(MultimodalExample(r.id, str(r.image), r.text, ids, types, label, r.planted, r.where, i))
            transform = build_transform(h.image_size, split == "train", h.image_mean, h.image_std, h.horizontal_flip)
            datasets[split] = MultimodalDataset(examples, transform)
        if h.heldout_fraction > 0:
            datasets["train"], datasets["heldout"] = self._hold_out(datasets["train"])
        if dropped:
            rank_zero_warn(f"dropped {dropped} class names outside the classes {names}")
        if encoder.truncated:
            rank_zero_warn(f"{encoder.truncated} texts were cut to max_length={h.max_length}")
        self._label_names, self._multi_label, self._datasets = names, multi, datasets

    def _hold_out(self, train: MultimodalDataset) -> tuple[MultimodalDataset, MultimodalDataset]:
        """(train, heldout): a seeded ``heldout_fraction`` of the training rows (at least one, never all) set aside;
        the held-out rows get the evaluation transform."""
        h, n = self.hparams, len(train)
        if n < 2:
            raise DataError(f"{h.train_file or h.data_dir}: heldout_fraction needs at least 2 training rows, got {n}")
        k = min(n - 1, max(1, round(h.heldout_fraction * n)))
        held = set(torch.randperm(n, generator=torch.Generator().manual_seed(h.seed))[:k].tolist())
        return (MultimodalDataset([e for i, e in enumerate(train.examples) if i not in held], train.transform),
                MultimodalDataset([e for i, e in enumerate(train.examples) if i in held],
                                  build_transform(h.image_size, False, h.image_mean, h.image_std)))

    def examples(self, split: str) -> list[MultimodalExample]:
        """The rows of ``split`` in index order; ``train`` includes the held-out rows (all the rows as read)."""
        found = list(self.datasets[split].examples)
        if split == "train" and "heldout" in self.datasets:
            found = sorted(found + list(self.datasets["heldout"].examples), key=lambda e: e.index)
        return found

    def fingerprint(self, split: str) -> str:
        """sha256 of what the rows of ``split`` are, independent of tokenizer and transforms: index, id, text, label,
        image path with its byte size and modification time (a rewritten or copied image changes it). Keys MSD's
        teacher-output cache together with the teacher and its settings."""
        h = hashlib.sha256()
        for e in self.examples(split):
            st = Path(e.image).stat()
            h.update(repr((e.index, e.id, e.image, st.st_size, st.st_mtime_ns, e.label, e.text)).encode())
        return h.hexdigest()[:16]

    def teacher_loader(self, split: str, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Unshuffled batches of this rank's share of :meth:`examples` (rows rank, rank + world, ...) with the
        evaluation transform: how the teacher's outputs are cached."""
        h = self.hparams
        plain = MultimodalDataset(self.examples(split)[rank::world_size],
                                  build_transform(h.image_size, False, h.image_mean, h.image_std))
        return DataLoader(plain, batch_size=h.eval_batch_size or h.batch_size, collate_fn=self._collate(),
                          num_workers=h.num_workers)

    def heldout_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Shuffled batches of this rank's share of the ``heldout`` split (``heldout_fraction``)."""
        if "heldout" not in self.datasets:
            raise ConfigError("no held-out split: set data.heldout_fraction (e.g. 0.1)")
        h = self.hparams
        sampler = DistributedSampler(self.datasets["heldout"], num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=h.seed)
        return DataLoader(self.datasets["heldout"], batch_size=h.batch_size, sampler=sampler,
                          collate_fn=self._collate(), num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def _loaded(self) -> dict[str, MultimodalDataset]:
        if self._datasets is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run yet")
        return self._datasets

    @property
    def datasets(self) -> dict[str, MultimodalDataset]:
        return self._loaded()

    @property
    def label_names(self) -> list[str]:
        self._loaded()
        return list(self._label_names)

    @property
    def num_labels(self) -> int:
        self._loaded()
        return len(self._label_names)

    @property
    def multi_label(self) -> bool:
        self._loaded()
        return self._multi_label

    def _collate(self) -> partial:
        return partial(collate_multimodal, pad_id=self.tokenizer.pad_token_id)
