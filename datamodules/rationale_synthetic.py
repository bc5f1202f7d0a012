"""Known-answer rationale data: the label is fully determined by planted cue words, the gold rationale is exactly them.

A check for UNIREX-style training (Chan et al., ICML 2022) that needs no download: a working rationale extractor
must find the cue words, and a faithful one loses the task when they are removed.

Classification (:func:`make_examples`): each class has its own :data:`CUE_WORDS` (class 0 negative, class 1
positive, up to five classes). An example is 15-30 words drawn from :data:`NEUTRAL` (ordinary words that are never
cues) with 1-3 cue words of its class inserted at random positions; ``rationale`` marks exactly those positions.

Multiple choice (:func:`make_multiple_choice`, CoS-E style): each answer option of :data:`OPTION_CUES` has one
dedicated cue word; the question is neutral words plus the cue of the right option, the options are that option
and others drawn from the same pool, in random order; the gold rationale is the cue.

Rows are deterministic for ``(seed, stream)``. Writers: :func:`write_sst` (SST-style JSONL) and
:func:`write_eraser` (an ERASER folder, documents in ``docs.jsonl`` or ``docs/``). CLI::

    lm-suite data rationale --out data/rationale/synthetic --n-train 512 --n-val 128 --seed 0
    lm-suite data rationale --out DIR --eraser [--multiple-choice] [--docs-folder]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Literal

from core.io import atomic_path, atomic_write_text, jsonl_text

CUE_WORDS: list[tuple[str, ...]] = [
    ("awful", "dreadful", "horrible", "terrible", "dismal", "boring", "lousy", "painful"),
    ("superb", "wonderful", "brilliant", "excellent", "delightful", "charming", "splendid", "marvelous"),
    ("frightening", "scary", "creepy", "chilling", "eerie", "spooky", "sinister", "haunting"),
    ("hilarious", "funny", "witty", "amusing", "comical", "playful", "silly", "cheerful"),
    ("tragic", "mournful", "gloomy", "tearful", "somber", "bleak", "heartbreaking", "sorrowful"),
]
CLASS_NAMES: list[str] = ["NEG", "POS", "SCARY", "FUNNY", "SAD"]
SENTIMENT_QUERY = "What is the sentiment of this review?"

# answer option -> the one cue word in a question that points to it
OPTION_CUES: dict[str, str] = {
    "bank": "money", "library": "books", "park": "trees", "kitchen": "stove", "beach": "sand",
    "airport": "planes", "hospital": "doctor", "school": "teacher", "garage": "wrench", "farm": "cows",
}

NEUTRAL: tuple[str, ...] = tuple("""
the a an this that these those it its they them their he she his her we our you your i my me
and or but so then also just still even only very quite rather about around over under after before
during while with without from into onto through between among against for of to in on at by as
film movie story plot scene scenes actor actors actress cast director script camera screen shot shots
music score sound song dialogue line lines ending opening middle part parts minute minutes hour hours
character characters role roles hero villain friend family house city town street room car train road
day night morning evening year week time place world people man woman child children group crowd
see seen saw watch watched look looked seem seemed make made take took give gave come came go went
say said tell told know knew think thought find found feel felt show showed play played turn turned
first second third last next other another same new old long short big small early late few many
""".split())

def class_names(num_classes: int) -> list[str]:
    """ERASER label names (sorted order = class index order, so a reader's sorted labels line up)."""
    return CLASS_NAMES[:num_classes] if num_classes == 2 else [f"C{i}" for i in range(num_classes)]


def _planted(rng: random.Random, cues: list[str], min_words: int, max_words: int) -> tuple[list[str], list[int]]:
    """Neutral words with ``cues`` inserted at random positions; returns the words and the 0/1 rationale."""
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(min_words, max_words))]
    marks = [0] * len(words)
    for cue in cues:
        at = rng.randint(0, len(words))
        words.insert(at, cue)
        marks.insert(at, 1)
    return words, marks


def make_examples(n: int, seed: int, num_classes: int = 2, min_words: int = 15, max_words: int = 30,
                  min_cues: int = 1, max_cues: int = 3, stream: str = "train") -> list[dict[str, Any]]:
    """``n`` SST-style rows ``{id, tokens, label, rationale}``; the label is the class of the planted cue words.

    ``min_words``-``max_words`` neutral words plus ``min_cues``-``max_cues`` cues; deterministic for
    ``(seed, stream)`` (give each split its own stream).
    """
    if not 2 <= num_classes <= len(CUE_WORDS):
        raise ValueError(f"num_classes must be in [2, {len(CUE_WORDS)}], got {num_classes}")
    if not 1 <= min_cues <= max_cues or not 1 <= min_words <= max_words:
        raise ValueError("need 1 <= min_cues <= max_cues and 1 <= min_words <= max_words")
    rng = random.Random(f"rationale-synthetic:{stream}:{seed}")
    rows = []
    for i in range(n):
        label = rng.randrange(num_classes)
        cues = [rng.choice(CUE_WORDS[label]) for _ in range(rng.randint(min_cues, max_cues))]
        words, marks = _planted(rng, cues, min_words, max_words)
        rows.append({"id": f"{stream}_{i:05d}", "tokens": words, "label": label, "rationale": marks})
    return rows


def make_multiple_choice(n: int, seed: int, num_choices: int = 3, min_words: int = 8, max_words: int = 16,
                         stream: str = "train") -> list[dict[str, Any]]:
    """``n`` CoS-E-style rows ``{id, tokens, options, label, rationale}``: ``label`` indexes the right option.

    The question holds exactly one option cue (:data:`OPTION_CUES`), that of the right option; write them with
    :func:`write_eraser`.
    """
    if not 2 <= num_choices <= len(OPTION_CUES):
        raise ValueError(f"num_choices must be in [2, {len(OPTION_CUES)}], got {num_choices}")
    rng = random.Random(f"rationale-synthetic-mc:{stream}:{seed}")
    rows = []
    for i in range(n):
        options = rng.sample(sorted(OPTION_CUES), num_choices)
        label = rng.randrange(num_choices)
        words, marks = _planted(rng, [OPTION_CUES[options[label]]], min_words, max_words)
        rows.append({"id": f"{stream}_{i:05d}", "tokens": words, "options": options, "label": label,
                     "rationale": marks})
    return rows


def write_sst(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows as SST-style JSONL, atomically; ``tokens`` become ``text`` (same words, smaller files)."""
    out = []
    for r in rows:
        r = dict(r)
        if "tokens" in r:
            r = {"id": r.pop("id"), "text": " ".join(r.pop("tokens")), **r}
        out.append(r)
    atomic_write_text(path, jsonl_text(out))


def _spans(marks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of 1s as ``[start, end)`` spans."""
    spans, start = [], None
    for i, m in enumerate([*marks, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def write_eraser(rows: list[dict[str, Any]], out_dir: str | Path, split: str,
                 docs: Literal["jsonl", "folder"] = "jsonl", label_names: list[str] | None = None,
                 query: str | None = SENTIMENT_QUERY) -> None:
    """Write rows (of :func:`make_examples` or :func:`make_multiple_choice`) as ``<out_dir>/<split>.jsonl``.

    Documents (docid = row id) go to ``docs.jsonl`` (merged with one already there) or ``docs/<docid>``. Each
    contiguous rationale run is one evidence group. Classification labels become ``label_names`` (default
    :func:`class_names`); multiple-choice rows get CoS-E's ``query`` (options joined by `` [sep] ``) and the right
    option's text as ``classification``. Every file is written atomically.
    """
    out_dir = Path(out_dir)
    if label_names is None and rows and "options" not in rows[0]:
        label_names = class_names(max(2, max(int(r["label"]) + 1 for r in rows)))
    annotations, documents = [], {}
    for r in rows:
        docid, words = str(r["id"]), list(r["tokens"])
        documents[docid] = " ".join(words)
        evidences = [[{"docid": docid, "start_token": s, "end_token": e, "start_sentence": -1, "end_sentence": -1,
                       "text": " ".join(words[s:e])}] for s, e in _spans(r.get("rationale") or [])]
        if "options" in r:
            ann_query, label = " [sep] ".join(r["options"]), r["options"][int(r["label"])]
        else:
            ann_query, label = query, label_names[int(r["label"])]  # type: ignore[index]
        annotations.append({"annotation_id": docid, "classification": label, "query": ann_query,
                            "query_type": None, "docids": None, "evidences": evidences})
    if docs == "folder":
        for docid, text in documents.items():
            atomic_write_text(out_dir / "docs" / docid, text + "\n")
    else:
        path = out_dir / "docs.jsonl"
        old = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    old[row["docid"]] = row["document"]
        merged = {**old, **documents}
        atomic_write_text(path, jsonl_text({"docid": d, "document": t} for d, t in merged.items()))
    atomic_write_text(out_dir / f"{split}.jsonl", jsonl_text(annotations))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=128)
    p.add_argument("--n-test", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--min-words", type=int, default=15)
    p.add_argument("--max-words", type=int, default=30)
    p.add_argument("--eraser", action="store_true", help="write an ERASER folder instead of SST-style JSONL")
    p.add_argument("--multiple-choice", action="store_true", help="CoS-E-style multiple choice (implies --eraser)")
    p.add_argument("--num-choices", type=int, default=3)
    p.add_argument("--docs-folder", action="store_true", help="ERASER documents as docs/<docid> files")
    args = p.parse_args(argv)
    sizes = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    splits = {}
    for split, n in sizes.items():
        if args.multiple_choice:
            splits[split] = make_multiple_choice(n, args.seed, args.num_choices, stream=split)
        else:
            splits[split] = make_examples(n, args.seed, args.num_classes, args.min_words, args.max_words,
                                          stream=split)
    out = Path(args.out)
    if args.eraser or args.multiple_choice:
        names = {"docs.jsonl", *(f"{s}.jsonl" for s in splits)}  # an earlier ERASER set there is replaced whole
        with atomic_path(out, owns=lambda rel: rel in names or (rel.startswith("docs/") and rel.count("/") == 1)) \
                as tmp:  # the whole folder appears at once
            for split, rows in splits.items():
                write_eraser(rows, tmp, split, docs="folder" if args.docs_folder else "jsonl")
    else:
        for split, rows in splits.items():
            write_sst(rows, out / f"{split}.jsonl")
    print(f"wrote {', '.join(f'{s}: {len(r)}' for s, r in splits.items())} to {out}")


if __name__ == "__main__":
    main()
