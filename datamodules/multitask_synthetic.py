"""A synthetic multi-task suite with planted structure: source tasks each teach one feature, targets combine them.

For the fixed representations of Huang et al. 2023 (one prefix per source task on a frozen LM, the texts'
representations under all prefixes combined, light heads trained on them for unseen target tasks): a target
that depends on features the source tasks teach should be learnable from the combined representation.

Every text is one short sentence over the words of :data:`datamodules.synthetic.TOPICS` (so the tiny tokenizer
encodes it in about ten tokens) and a few function words, e.g. ``"i do not like apple, pear and plum."``. Four
latent features are planted, each drawn independently and uniformly, and each recoverable from the text alone
(:func:`features_of`):

- ``topic``: the category of the listed items (all items come from one of ``animals``, ``cities``, ``colours``,
  ``fruits``, ``tools``; class index = position in that sorted order);
- ``negated``: the frame is negated (contains the word ``not`` or ``no``);
- ``count``: the number of items listed, 1 to 4 (``a``; ``a and b``; ``a, b and c``; ``a, b, c and d``);
- ``marked``: an item is one of :data:`MARKED` (the first two words of each topic's list).

Source tasks (one feature each)::

    src_topic     classification, 5 labels   label = topic index
    src_negation  classification, 2 labels   label = negated
    src_count     classification, 4 labels   label = count - 1
    src_marked    classification, 2 labels   label = marked

Target tasks (held out: never trained as a source; each depends on two or three source features)::

    tgt_topic_neg      classification, 2 labels   label = (topic in {fruits, animals}) XOR negated
                                                  depends on src_topic, src_negation (not linear in the two)
    tgt_marked_count   classification, 2 labels   label = marked AND count >= 3
                                                  depends on src_marked, src_count
    tgt_living_count   classification, 4 labels   label = 2 * (topic in {fruits, animals}) + (count >= 3)
                                                  depends on src_topic, src_count
    tgt_count_topic    regression                 label = count + 2 * (topic in {colours, cities}) - negated
                                                  depends on src_count, src_topic, src_negation

Each task's texts are drawn afresh (a random generator per seed, task and split), labels are exact (no noise).
Output: ``<out>/<task>/{train,val,test}.jsonl`` with fields ``text`` and ``label`` (int, or float for
regression) and ``<out>/tasks.json`` (name, role, type, num_labels, rule, depends_on, files), written as a
whole folder atomically. Deterministic for a seed::

    lm-suite data multitask --out data/multitask --n-train 800 --n-val 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.io import atomic_path
from datamodules.synthetic import TOPICS

TOPIC_NAMES: list[str] = sorted(TOPICS)  # animals, cities, colours, fruits, tools
MARKED: frozenset[str] = frozenset(w for words in TOPICS.values() for w in words[:2])
LIVING = ("fruits", "animals")
# (plain frame, negated frame); {x} is the list of items.
FRAMES: list[tuple[str, str]] = [
    ("i like {x}.", "i do not like {x}."),
    ("here is {x}.", "here is no {x}."),
    ("we have {x}.", "we have no {x}."),
    ("this one is about {x}.", "this one is not about {x}."),
    ("let me think about {x}.", "let me not think about {x}."),
    ("my answer is {x}.", "my answer is not {x}."),
]
NEGATIONS = frozenset({"not", "no"})
WORD_TOPIC: dict[str, str] = {w: t for t, words in TOPICS.items() for w in words}


@dataclass(frozen=True)
class Features:
    topic: str
    negated: bool
    count: int
    marked: bool


@dataclass(frozen=True)
class Task:
    name: str
    role: str  # source | target
    type: str  # classification | regression
    num_labels: int
    rule: str
    depends_on: tuple[str, ...]
    label: Callable[[Features], int | float]


TASKS: list[Task] = [
    Task("src_topic", "source", "classification", 5, "topic index in (animals, cities, colours, fruits, tools)",
         (), lambda f: TOPIC_NAMES.index(f.topic)),
    Task("src_negation", "source", "classification", 2, "1 if the sentence is negated (not / no)",
         (), lambda f: int(f.negated)),
    Task("src_count", "source", "classification", 4, "number of items listed minus 1",
         (), lambda f: f.count - 1),
    Task("src_marked", "source", "classification", 2, "1 if an item is a marked word (first two of its topic)",
         (), lambda f: int(f.marked)),
    Task("tgt_topic_neg", "target", "classification", 2, "(topic in {fruits, animals}) XOR negated",
         ("src_topic", "src_negation"), lambda f: int((f.topic in LIVING) != f.negated)),
    Task("tgt_marked_count", "target", "classification", 2, "marked AND count >= 3",
         ("src_marked", "src_count"), lambda f: int(f.marked and f.count >= 3)),
    Task("tgt_living_count", "target", "classification", 4, "2 * (topic in {fruits, animals}) + (count >= 3)",
         ("src_topic", "src_count"), lambda f: 2 * int(f.topic in LIVING) + int(f.count >= 3)),
    Task("tgt_count_topic", "target", "regression", 1, "count + 2 * (topic in {colours, cities}) - negated",
         ("src_count", "src_topic", "src_negation"),
         lambda f: float(f.count + 2 * int(f.topic in ("colours", "cities")) - int(f.negated))),
]
TASKS_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def join_items(items: list[str]) -> str:
    """``a``; ``a and b``; ``a, b and c``; ``a, b, c and d``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sample_features(rng: random.Random) -> Features:
    return Features(rng.choice(TOPIC_NAMES), rng.random() < 0.5, rng.randint(1, 4), rng.random() < 0.5)


def render(f: Features, rng: random.Random) -> str:
    """A sentence with exactly the features ``f`` (the frame and the items are otherwise random)."""
    words = TOPICS[f.topic]
    marked, plain = [w for w in words if w in MARKED], [w for w in words if w not in MARKED]
    if f.marked:
        n_marked = rng.randint(1, min(len(marked), f.count))
        items = rng.sample(marked, n_marked) + rng.sample(plain, f.count - n_marked)
    else:
        items = rng.sample(plain, f.count)
    rng.shuffle(items)
    frame = rng.choice(FRAMES)[int(f.negated)]
    return frame.format(x=join_items(items))


def features_of(text: str) -> Features:
    """Recover the planted features from a sentence of this suite (the inverse of :func:`render`)."""
    tokens = re.findall(r"[a-z]+", text.lower())
    items = [w for w in tokens if w in WORD_TOPIC]
    topics = {WORD_TOPIC[w] for w in items}
    if len(topics) != 1 or not 1 <= len(items) <= 4:
        raise ValueError(f"not a sentence of the suite: {text!r}")
    return Features(topics.pop(), bool(NEGATIONS & set(tokens)), len(items), any(w in MARKED for w in items))


def make_rows(task: Task, n: int, seed: int, split: str) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:{task.name}:{split}")  # str seeds are hashed deterministically
    rows = []
    for _ in range(n):
        f = sample_features(rng)
        rows.append({"text": render(f, rng), "label": task.label(f)})
    return rows


def manifest(seed: int, sizes: dict[str, int]) -> dict[str, Any]:
    return {
        "generator": "datamodules.multitask_synthetic",
        "seed": seed,
        "features": {
            "topic": f"category of the listed items, index in {TOPIC_NAMES}",
            "negated": "the frame contains 'not' or 'no'",
            "count": "number of items listed, 1-4",
            "marked": f"an item is in {sorted(MARKED)}",
        },
        "tasks": [
            {"name": t.name, "role": t.role, "type": t.type, "num_labels": t.num_labels, "rule": t.rule,
             "depends_on": list(t.depends_on), "text_field": "text", "label_field": "label",
             "sizes": sizes, "files": {s: f"{t.name}/{s}.jsonl" for s in sizes}}
            for t in TASKS
        ],
    }


def write_suite(out: str | Path, n_train: int = 800, n_val: int = 200, n_test: int = 200, seed: int = 0) -> Path:
    """Write every task's splits and ``tasks.json`` under ``out`` (replaced as a whole, atomically)."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for task in TASKS:
            (tmp / task.name).mkdir()
            for split, n in sizes.items():
                text = "".join(json.dumps(r) + "\n" for r in make_rows(task, n, seed, split))
                (tmp / task.name / f"{split}.jsonl").write_text(text, encoding="utf-8")
        (tmp / "tasks.json").write_text(json.dumps(manifest(seed, sizes), indent=2) + "\n", encoding="utf-8")
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic multi-task suite (source and target tasks).")
    parser.add_argument("--out", type=Path, default=Path("data/multitask"))
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=None, help="default: as --n-val")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_test = args.n_val if args.n_test is None else args.n_test
    write_suite(args.out, args.n_train, args.n_val, n_test, args.seed)
    print(f"wrote {len(TASKS)} tasks ({args.n_train} train, {args.n_val} val, {n_test} test each) to {args.out}")


if __name__ == "__main__":
    main()
