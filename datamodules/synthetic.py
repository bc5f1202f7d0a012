"""Small preference datasets with a planted answer, for offline demos and tests.

Every pair's chosen response follows the prompt's constraint and the rejected one breaks it, so a
policy trained with DPO should learn to rank held-out chosen responses above rejected ones
(``rewards/accuracies`` rising from about 0.5 towards 1.0). About half the pairs share a prefix
(the two responses agree on a first sentence, then branch), as MCTS pairs do.

    lm-suite data preference --out data/tiny --train 512 --val 64
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable
from pathlib import Path

from core.io import atomic_write_text

TOPICS: dict[str, list[str]] = {
    "fruits": ["apple", "pear", "plum", "cherry", "mango", "grape", "lemon", "peach", "melon", "kiwi"],
    "animals": ["cat", "dog", "horse", "otter", "eagle", "whale", "mouse", "tiger", "camel", "zebra"],
    "colours": ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "pink"],
    "cities": ["paris", "lima", "oslo", "cairo", "tokyo", "delhi", "quito", "rome", "dakar", "seoul"],
    "tools": ["hammer", "saw", "drill", "wrench", "chisel", "ladder", "shovel", "rake", "axe", "file"],
}
OPENERS = [
    "Here is my answer.",
    "Sure, happy to help.",
    "Good question.",
    "Let me think about that.",
    "This one is easy.",
]
CLOSERS = ["Thanks.", "Hope this helps.", "That is all.", "Have a nice day."]


def _list(items: list[str], sep: str) -> str:
    return sep.join(items)


def make_pair(rng: random.Random) -> dict:
    """One preference pair; the constraint kind decides what chosen does and rejected breaks."""
    topic = rng.choice(sorted(TOPICS))
    n = rng.randint(2, 4)
    items = rng.sample(TOPICS[topic], n)
    kind = rng.choice(["lowercase", "no_comma", "end_phrase", "uppercase"])
    closer = rng.choice(CLOSERS)
    if kind == "lowercase":
        prompt = f"List {n} {topic} in lowercase letters only."
        good, bad = _list(items, ", ") + ".", _list([w.capitalize() for w in items], ", ") + "."
    elif kind == "uppercase":
        prompt = f"Write {n} {topic} in capital letters."
        good, bad = _list([w.upper() for w in items], ", ") + ".", _list(items, ", ") + "."
    elif kind == "no_comma":
        prompt = f"Name {n} {topic} and do not use any commas."
        good, bad = _list(items, " and ") + ".", _list(items, ", ") + "."
    else:
        prompt = f"Name {n} {topic} and end your answer with the phrase \"{closer}\""
        good, bad = _list(items, " and ") + ". " + closer, _list(items, " and ") + "."
    shared = rng.random() < 0.5
    if shared:
        opener = rng.choice(OPENERS) if kind != "lowercase" else rng.choice(OPENERS).lower()
        if kind == "uppercase":
            opener = opener.upper()
        if kind == "no_comma":
            opener = opener.replace(",", "")
        good, bad = f"{opener} {good}", f"{opener} {bad}"
    return {
        "prompt": prompt,
        "chosen": good,
        "rejected": bad,
        "chosen_score": 1.0,
        "rejected_score": 0.0,
        "constraint": kind,
        "shared_prefix": shared,
    }


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [make_pair(rng) for _ in range(n)]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def corpus_lines() -> list[str]:
    """Text for training the tiny tokenizer: every phrase the generator can emit."""
    pairs = make_pairs(2000, seed=12345)
    return [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic preference dataset (JSONL).")
    parser.add_argument("--out", type=Path, default=Path("data/tiny"))
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_jsonl(args.out / "train.jsonl", make_pairs(args.train, args.seed))
    write_jsonl(args.out / "val.jsonl", make_pairs(args.val, args.seed + 1))
    print(f"wrote {args.train} train and {args.val} val pairs to {args.out}")


if __name__ == "__main__":
    main()
