"""Offline image + text classification data whose label is planted in the image, the text, or both.

A known-answer check for MSD (Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal
Understanding", Findings of EMNLP 2021): modalities matter differently per instance, and the saliency of a modality
(how much the teacher's prediction drops without it) should find the one that carries the label. Here that modality
is known for every row, recorded in its ``planted`` field:

- ``"image"``: only the image carries the label; the text is neutral;
- ``"text"``: only the text carries the label; the image is uninformative;
- ``"both"``: both carry it, consistently.

Default proportions 40% / 40% / 20% (exact counts per split, rounded; shuffled). A model must read the image for
image-carried rows and the text for text-carried ones, so removing the carrying modality destroys the prediction.

**Image** (PIL, ``image_size`` square PNG): a light background colour and one dark shape of random size, position
and colour (colours are independent of the label). When the image carries the label the shape is the class's
(:data:`CLASS_SHAPES`: class 0 circle, class 1 square, 2 diamond, 3 cross); otherwise it is a triangle
(:data:`NEUTRAL_SHAPE`, never a class shape), so an uninformative image is recognisably so (our choice; a random
class shape would plant a conflicting cue instead).

**Text**: ``"the {adjective} {subject} {verb} {place} {time}"`` with words drawn uniformly. When the text carries
the label the adjective is a cue word of the class (:data:`CUE_WORDS`: class 0 calm..., class 1 angry...);
otherwise it is a neutral adjective. Nothing else in the sentence depends on the label or the shape.

Rows (generic multimodal JSONL of :mod:`datamodules.multimodal`, plus metadata the readers ignore)::

    {"id": "train_00000", "img": "img/train_00000.png", "text": "the angry dog waits in the park at noon",
     "label": 1, "planted": "text", "shape": "triangle", "cue": "angry"}

Output ``<out>/{train,val,test}.jsonl``, ``<out>/img/<id>.png`` and ``<out>/meta.json`` (the settings and the
class -> shape / cue tables), written as a whole folder atomically. Deterministic for ``(seed, split)``::

    lm-suite data multimodal --out data/multimodal/synthetic --n-train 600 --n-val 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageDraw

from core.io import atomic_path, jsonl_text

PLANTED_NAMES: tuple[str, ...] = ("image", "text", "both")  # index = the batch's ``planted`` code
CLASS_SHAPES: tuple[str, ...] = ("circle", "square", "diamond", "cross")
NEUTRAL_SHAPE = "triangle"
CLASS_NAMES: tuple[str, ...] = ("calm", "angry", "happy", "sad")
CUE_WORDS: tuple[tuple[str, ...], ...] = (
    ("calm", "peaceful", "gentle", "relaxed"),
    ("angry", "furious", "hostile", "enraged"),
    ("happy", "joyful", "cheerful", "delighted"),
    ("sad", "gloomy", "tearful", "miserable"),
)
NEUTRAL_ADJECTIVES: tuple[str, ...] = ("tall", "young", "old", "local", "small", "distant", "nearby", "ordinary")
SUBJECTS: tuple[str, ...] = ("person", "dog", "crowd", "driver", "child", "neighbour", "cat", "teacher")
VERBS: tuple[str, ...] = ("walks", "waits", "stands", "sits", "looks around", "turns back")
PLACES: tuple[str, ...] = ("near the river", "by the station", "in the park", "on the street", "at the market",
                           "outside the school")
TIMES: tuple[str, ...] = ("in the morning", "at noon", "in the evening", "at night", "after lunch", "before dinner")
DEFAULT_IMAGE_SIZE = 48  # small PNGs (~200 bytes each) keep the committed set small; the datamodule resizes


class Drawing(NamedTuple):
    """What to draw: a shape filling ``box`` (x0, y0, x1, y1; inclusive) in ``fg`` on ``bg``."""

    shape: str
    box: tuple[int, int, int, int]
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]


def render(d: Drawing, size: int) -> Image.Image:
    """The RGB image of one drawing (no anti-aliasing: two colours exactly, lossless in PNG)."""
    img = Image.new("RGB", (size, size), d.bg)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = d.box
    xc, yc = (x0 + x1) // 2, (y0 + y1) // 2
    if d.shape == "circle":
        draw.ellipse(d.box, fill=d.fg)
    elif d.shape == "square":
        draw.rectangle(d.box, fill=d.fg)
    elif d.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (xc, y0)], fill=d.fg)
    elif d.shape == "diamond":
        draw.polygon([(xc, y0), (x1, yc), (xc, y1), (x0, yc)], fill=d.fg)
    elif d.shape == "cross":
        w = max(1, (x1 - x0 + 1) // 3)
        draw.rectangle((xc - w // 2, y0, xc - w // 2 + w - 1, y1), fill=d.fg)
        draw.rectangle((x0, yc - w // 2, x1, yc - w // 2 + w - 1), fill=d.fg)
    else:
        raise ValueError(f"unknown shape {d.shape!r}")
    return img


def _drawing(rng: random.Random, shape: str, size: int) -> Drawing:
    side = rng.randint(max(4, round(0.35 * size)), max(4, round(0.6 * size)))
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    bg = tuple(rng.randint(190, 255) for _ in range(3))
    fg = tuple(rng.randint(0, 110) for _ in range(3))
    return Drawing(shape, (x0, y0, x0 + side - 1, y0 + side - 1), fg, bg)  # type: ignore[arg-type]


def sentence(rng: random.Random, cue: str | None) -> str:
    """A template sentence whose adjective is ``cue`` (or a neutral adjective when None)."""
    adjective = cue if cue is not None else rng.choice(NEUTRAL_ADJECTIVES)
    return " ".join(["the", adjective, rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PLACES),
                     rng.choice(TIMES)])


def make_examples(n: int, seed: int, num_classes: int = 2, p_image: float = 0.4, p_text: float = 0.4,
                  image_size: int = DEFAULT_IMAGE_SIZE, stream: str = "train") -> list[tuple[dict[str, Any], Drawing]]:
    """``n`` rows (without ``img``) with their drawings; deterministic for ``(seed, stream)``.

    ``round(n * p_image)`` rows are image-carried, ``round(n * p_text)`` text-carried, the rest both.
    """
    if not 2 <= num_classes <= len(CLASS_SHAPES):
        raise ValueError(f"num_classes must be in [2, {len(CLASS_SHAPES)}], got {num_classes}")
    if p_image < 0 or p_text < 0 or p_image + p_text > 1:
        raise ValueError(f"need p_image, p_text >= 0 and p_image + p_text <= 1, got {p_image}, {p_text}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    rng = random.Random(f"multimodal-synthetic:{stream}:{seed}")
    n_image, n_text = round(n * p_image), round(n * p_text)
    planted = ["image"] * n_image + ["text"] * n_text + ["both"] * max(0, n - n_image - n_text)
    rng.shuffle(planted)
    out = []
    for i, where in enumerate(planted[:n]):
        label = rng.randrange(num_classes)
        shape = CLASS_SHAPES[label] if where in ("image", "both") else NEUTRAL_SHAPE
        cue = rng.choice(CUE_WORDS[label]) if where in ("text", "both") else None
        row = {"id": f"{stream}_{i:05d}", "text": sentence(rng, cue), "label": label, "planted": where,
               "shape": shape, "cue": cue}
        out.append((row, _drawing(rng, shape, image_size)))
    return out


def write_dataset(out: str | Path, splits: dict[str, list[tuple[dict[str, Any], Drawing]]], image_size: int,
                  meta: dict[str, Any] | None = None) -> None:
    """Write ``<out>/<split>.jsonl``, ``<out>/img/<id>.png`` and ``<out>/meta.json``; the folder appears at once.
    An earlier dataset there is replaced whole; a folder with other files is refused (``core.io.atomic_path``)."""
    names = {"meta.json", *(f"{s}.jsonl" for s in ("train", "val", "test", *splits))}
    with atomic_path(out, owns=lambda rel: rel in names or (rel.startswith("img/") and rel.endswith(".png")
                                                              and rel.count("/") == 1)) as tmp:
        (tmp / "img").mkdir(parents=True)
        for split, examples in splits.items():
            rows = []
            for row, drawing in examples:
                name = f"img/{row['id']}.png"
                render(drawing, image_size).save(tmp / name, format="PNG", optimize=True)
                rows.append({"id": row["id"], "img": name, **{k: v for k, v in row.items() if k != "id"}})
            (tmp / f"{split}.jsonl").write_text(jsonl_text(rows), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (replaced as a whole)")
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--p-image", type=float, default=0.4, help="share of rows whose label only the image carries")
    p.add_argument("--p-text", type=float, default=0.4, help="share of rows whose label only the text carries")
    args = p.parse_args(argv)
    sizes = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    splits = {s: make_examples(n, args.seed, args.num_classes, args.p_image, args.p_text, args.image_size, stream=s)
              for s, n in sizes.items()}
    k = args.num_classes
    meta = {
        "seed": args.seed, "image_size": args.image_size, "num_classes": k,
        "proportions": {"image": args.p_image, "text": args.p_text, "both": round(1 - args.p_image - args.p_text, 6)},
        "planted": list(PLANTED_NAMES), "class_names": list(CLASS_NAMES[:k]), "class_shapes": list(CLASS_SHAPES[:k]),
        "neutral_shape": NEUTRAL_SHAPE, "cue_words": [list(c) for c in CUE_WORDS[:k]],
        "neutral_adjectives": list(NEUTRAL_ADJECTIVES), "sizes": sizes,
    }
    write_dataset(args.out, splits, args.image_size, meta)
    print(f"wrote {', '.join(f'{s}: {n}' for s, n in sizes.items())} rows with {args.image_size}px images "
          f"to {args.out}")


if __name__ == "__main__":
    main()
