"""Curation of instruction-following preference pairs for controlled ablations (Kim et al. 2025, NAACL).

Kim et al. 2025, "A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
study how attributes of the preference pairs shape what DPO learns: whether the two responses share a prefix
(MCTS pairs) or not (RS pairs), the contrast between them (``chosen_score - rejected_score``: high, low, or a mix),
the quality of the chosen response (``chosen_score``) and the prompt's complexity (its number of verifiable
constraints). A fair comparison holds the dataset size equal across the arms of an ablation; this module reads the
pair files of the ``rs`` and ``mcts`` commands (:mod:`.pairs`, :mod:`.mcts`), validates them, filters and mixes
them, and cuts equal-sized subsets per ablation.

- :func:`read_pairs` validates every line (errors name ``path:line`` and the field) and skips failure records
  (lines with an ``error`` field; :func:`read_pairs_counted` also returns how many were skipped). Missing
  ``complexity`` is the number of constraints, missing ``method`` is ``mcts`` for a non-empty ``shared_prefix``
  and ``rs`` otherwise, missing ``shared_prefix`` is ``""``.
- :func:`select` filters by contrast, chosen score, complexity, method and shared prefix (bounds inclusive), then
  drops duplicate ``(prompt, chosen, rejected)`` triples, keeping the first.
- :func:`mix` samples ``n`` pairs from named groups in given proportions (largest-remainder rounding).
- :func:`make_subsets` cuts the arms of one ablation, all of the same size, and :func:`subset_stats` describes
  each arm (mean contrast, chosen score, complexity, share with a shared prefix) so that what else differs between
  arms is visible. Ablations and arms:

  - ``prefix``: ``shared`` (non-empty ``shared_prefix``) vs ``no_shared``;
  - ``contrast``: ``high`` vs ``low`` vs ``mixed`` (exactly ``n // 2`` high and ``n - n // 2`` low pairs: the
    first ones of the ``high`` and ``low`` arms' samples, so ``mixed`` differs from each by swapping half);
    medium-contrast pairs take no part;
  - ``complexity``: ``easy`` vs ``moderate`` vs ``hard``.

Thresholds (our choices; the paper's exact cut points are not known to us): contrast ``gap <= 0.34`` is low,
``gap >= 0.66`` high, anything between medium (so with 3 constraints a gap of 1/3 is low and 2/3 high); complexity
``<= 1`` constraint is easy, ``2..3`` moderate, ``>= 4`` hard. All are arguments (and CLI flags).

Determinism: sampling uses ``random.Random`` seeded with strings built from ``seed`` (stable across processes and
``PYTHONHASHSEED``), and every file is written atomically, so the same inputs (in the same order) and seed give
byte-identical files; a run killed part-way leaves each file either as before or complete, and a rerun ends with
exactly the files of an uninterrupted run. A run holds an exclusive lock on its ``--out`` (``--out-dir``) while it
works (:func:`core.locks.output_lock`): a second run into the same output stops at once with an error naming the
first.

CLI (``lm-suite if``)::

    curate --pairs rs.jsonl mcts.jsonl --out curated.jsonl [--min-gap X] [--max-gap X] [--min-chosen X]
           [--max-chosen X] [--complexity 1,2,3] [--method rs|mcts ...] [--shared-prefix yes|no]
           [--n N] [--mix high=0.5,low=0.5] [--seed S]
    subsets --pairs rs.jsonl mcts.jsonl --ablation prefix|contrast|complexity --out-dir DIR [--n N] [--seed S]

``subsets`` writes ``<out-dir>/<ablation>_<arm>.jsonl`` per arm and ``<out-dir>/<ablation>_stats.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import atomic_write_text, jsonl_text
from core.locks import output_lock
from core.records import iter_jsonl

__all__ = [
    "ABLATIONS",
    "CONTRAST_BUCKETS",
    "COMPLEXITY_BUCKETS",
    "add_curate_arguments",
    "add_subsets_arguments",
    "complexity_bucket",
    "contrast",
    "contrast_bucket",
    "curate",
    "dedupe",
    "has_shared_prefix",
    "largest_remainder",
    "make_subsets",
    "max_mix_size",
    "mix",
    "read_pairs",
    "read_pairs_counted",
    "run_curate",
    "run_subsets",
    "select",
    "subset_stats",
    "write_subsets",
]

Pair = dict[str, Any]

EPS = 1e-9  # scores are fractions like 1/3: compare with a tolerance
LOW_MAX = 0.34
HIGH_MIN = 0.66
EASY_MAX = 1
MODERATE_MAX = 3
CONTRAST_BUCKETS = ("low", "medium", "high")
COMPLEXITY_BUCKETS = ("easy", "moderate", "hard")
ABLATIONS: dict[str, tuple[str, ...]] = {
    "prefix": ("shared", "no_shared"),
    "contrast": ("high", "low", "mixed"),
    "complexity": COMPLEXITY_BUCKETS,
}
METHODS = ("rs", "mcts")


# ------------------------------------------------------------------------------------------------ reading


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate(obj: dict[str, Any], where: str) -> Pair:
    """A copy of one pair line with ``complexity``, ``method`` and ``shared_prefix`` filled in; DataError if bad."""
    pair = dict(obj)
    for field in ("prompt", "chosen", "rejected"):
        value = pair.get(field)
        if value is None:
            raise DataError(f"{where}: missing field {field!r} (expected a non-empty string)")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field {field!r}: expected a non-empty string, got {value!r:.60}")
    for field in ("chosen_score", "rejected_score"):
        value = pair.get(field)
        if value is None:
            raise DataError(f"{where}: missing field {field!r} (expected a number in [0, 1])")
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: field {field!r}: expected a number in [0, 1], got {value!r}")
    if "complexity" not in pair or pair["complexity"] is None:
        constraints = pair.get("constraints")
        ids = constraints.get("instruction_id_list") if isinstance(constraints, dict) else None
        if not isinstance(ids, list):
            raise DataError(
                f"{where}: missing field 'complexity' (expected an integer >= 1, or constraints.instruction_id_list "
                "to count)"
            )
        pair["complexity"] = len(ids)
    complexity = pair["complexity"]
    if not isinstance(complexity, int) or isinstance(complexity, bool) or complexity < 1:
        raise DataError(f"{where}: field 'complexity': expected an integer >= 1, got {complexity!r}")
    prefix = pair.get("shared_prefix")
    if prefix is None:
        prefix = pair["shared_prefix"] = ""
    if not isinstance(prefix, str):
        raise DataError(f"{where}: field 'shared_prefix': expected a string, got {type(prefix).__name__}")
    for field in ("chosen", "rejected"):
        if not pair[field].startswith(prefix):
            raise DataError(f"{where}: field 'shared_prefix': {field!r} does not start with the shared prefix")
    method = pair.get("method")
    if method is None:
        method = pair["method"] = "mcts" if prefix else "rs"
    if not isinstance(method, str) or not method:
        raise DataError(f"{where}: field 'method': expected a non-empty string such as 'rs' or 'mcts', got {method!r}")
    return pair


def read_pairs_counted(paths: str | Path | Iterable[str | Path]) -> tuple[list[Pair], int]:
    """Validated pairs of the JSONL ``paths`` in file and line order, and the number of failure records skipped."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    if not paths:
        raise DataError("no pair files given")
    out: list[Pair] = []
    failures = 0
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file")
        for lineno, obj in iter_jsonl(path):
            if "error" in obj:
                failures += 1
                continue
            out.append(_validate(obj, f"{path}:{lineno}"))
    return out, failures


def read_pairs(paths: str | Path | Iterable[str | Path]) -> list[Pair]:
    """Validated pairs of one or more pair JSONL files (failure records skipped; see the module docstring)."""
    return read_pairs_counted(paths)[0]


# ------------------------------------------------------------------------------------------------ attributes


def contrast(p: Pair) -> float:
    """``chosen_score - rejected_score``."""
    return float(p["chosen_score"]) - float(p["rejected_score"])


def has_shared_prefix(p: Pair) -> bool:
    """Whether the pair's responses share a (non-empty) prefix."""
    return bool(p.get("shared_prefix"))


def complexity_bucket(c: int, easy_max: int = EASY_MAX, moderate_max: int = MODERATE_MAX) -> str:
    """``easy`` (``c <= easy_max``), ``moderate`` (``<= moderate_max``) or ``hard``; defaults are our choice."""
    if easy_max >= moderate_max:
        raise ValueError(f"easy_max ({easy_max}) must be below moderate_max ({moderate_max})")
    return "easy" if c <= easy_max else "moderate" if c <= moderate_max else "hard"


def contrast_bucket(gap: float, low_max: float = LOW_MAX, high_min: float = HIGH_MIN) -> str:
    """``low`` (``gap <= low_max``), ``high`` (``gap >= high_min``) or ``medium``; defaults are our choice."""
    if low_max >= high_min:
        raise ValueError(f"low_max ({low_max}) must be below high_min ({high_min})")
    return "low" if gap <= low_max + EPS else "high" if gap >= high_min - EPS else "medium"


# ------------------------------------------------------------------------------------------------ selection


def dedupe(pairs: Iterable[Pair]) -> list[Pair]:
    """``pairs`` without repeated ``(prompt, chosen, rejected)`` triples, keeping the first of each."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Pair] = []
    for p in pairs:
        key = (p["prompt"], p["chosen"], p["rejected"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _check_range(name: str, lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min_{name} ({lo}) is above max_{name} ({hi})")


def select(
    pairs: Iterable[Pair],
    *,
    min_gap: float | None = None,
    max_gap: float | None = None,
    min_chosen: float | None = None,
    max_chosen: float | None = None,
    complexity: Iterable[int] | None = None,
    methods: Iterable[str] | None = None,
    shared_prefix: bool | None = None,
    dedupe: bool = True,
) -> list[Pair]:
    """The pairs passing every given filter (bounds inclusive; ``None`` = no filter), in input order.

    ``shared_prefix``: True keeps pairs with a shared prefix, False those without. With ``dedupe``, repeated
    ``(prompt, chosen, rejected)`` triples among the kept pairs are dropped (the first is kept).
    """
    _check_range("gap", min_gap, max_gap)
    _check_range("chosen", min_chosen, max_chosen)
    levels = None if complexity is None else set(complexity)
    wanted = None if methods is None else set(methods)
    out: list[Pair] = []
    for p in pairs:
        gap = contrast(p)
        if min_gap is not None and gap < min_gap - EPS or max_gap is not None and gap > max_gap + EPS:
            continue
        score = p["chosen_score"]
        if min_chosen is not None and score < min_chosen - EPS or max_chosen is not None and score > max_chosen + EPS:
            continue
        if levels is not None and p["complexity"] not in levels:
            continue
        if wanted is not None and p["method"] not in wanted:
            continue
        if shared_prefix is not None and has_shared_prefix(p) != shared_prefix:
            continue
        out.append(p)
    return _dedupe(out) if dedupe else out


_dedupe = dedupe  # ``select``'s keyword shadows the function


# ------------------------------------------------------------------------------------------------ mixing


def largest_remainder(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """Counts proportional to ``weights`` that sum to ``n``: floors, then the largest remainders get one more.

    Ties go to the group named first in ``weights``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not weights:
        raise ValueError("no groups to mix")
    for name, w in weights.items():
        if not _is_number(w) or w < 0:
            raise ValueError(f"weight of group {name!r} must be a number >= 0, got {w!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the weights sum to 0")
    quotas = {name: n * w / total for name, w in weights.items()}
    counts = {name: math.floor(q) for name, q in quotas.items()}
    order = sorted(enumerate(weights), key=lambda iw: (-(quotas[iw[1]] - counts[iw[1]]), iw[0]))
    for _, name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def max_mix_size(sizes: Mapping[str, int], weights: Mapping[str, float]) -> int:
    """The largest ``n`` whose :func:`largest_remainder` counts every group of ``sizes`` can supply."""
    total = sum(weights.values())
    bound = min(
        (math.floor((sizes.get(name, 0) + 1) * total / w) for name, w in weights.items() if w > 0), default=0
    )
    for n in range(bound, -1, -1):  # counts are not monotone in n (the Alabama paradox): scan down
        if all(c <= sizes.get(name, 0) for name, c in largest_remainder(weights, n).items()):
            return n
    return 0


def mix(groups: Mapping[str, Sequence[Pair]], weights: Mapping[str, float], n: int, seed: int = 0) -> list[Pair]:
    """``n`` pairs drawn without replacement from ``groups`` in the proportions ``weights``, order shuffled.

    Counts are :func:`largest_remainder`; each group is sampled with its own seeded generator, so the result depends
    only on the groups, weights, ``n`` and ``seed``. Raises ValueError naming a group that is missing or too small.
    """
    unknown = [name for name in weights if name not in groups]
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(map(repr, unknown))}: expected one of {', '.join(groups)}")
    counts = largest_remainder(weights, n)
    for name, count in counts.items():
        if count > len(groups[name]):
            raise ValueError(f"group {name!r} has {len(groups[name])} pairs, {count} needed for n={n}")
    out: list[Pair] = []
    for name, count in counts.items():
        out.extend(random.Random(f"{seed}:mix:{name}").sample(list(groups[name]), count))
    random.Random(f"{seed}:mix:shuffle").shuffle(out)
    return out


# ------------------------------------------------------------------------------------------------ ablation subsets


def _arm_pools(
    pairs: Sequence[Pair], ablation: str, low_max: float, high_min: float, easy_max: int, moderate_max: int
) -> dict[str, list[Pair]]:
    """The pool each arm draws from (``mixed`` draws from the ``high`` and ``low`` pools)."""
    if ablation == "prefix":
        return {
            "shared": [p for p in pairs if has_shared_prefix(p)],
            "no_shared": [p for p in pairs if not has_shared_prefix(p)],
        }
    if ablation == "contrast":
        buckets = [contrast_bucket(contrast(p), low_max, high_min) for p in pairs]
        return {b: [p for p, pb in zip(pairs, buckets, strict=True) if pb == b] for b in ("high", "low")}
    if ablation == "complexity":
        buckets = [complexity_bucket(p["complexity"], easy_max, moderate_max) for p in pairs]
        return {b: [p for p, pb in zip(pairs, buckets, strict=True) if pb == b] for b in COMPLEXITY_BUCKETS}
    raise ValueError(f"unknown ablation {ablation!r}: expected one of {', '.join(ABLATIONS)}")


def make_subsets(
    pairs: Sequence[Pair],
    ablation: str,
    n: int | None = None,
    seed: int = 0,
    *,
    low_max: float = LOW_MAX,
    high_min: float = HIGH_MIN,
    easy_max: int = EASY_MAX,
    moderate_max: int = MODERATE_MAX,
) -> dict[str, list[Pair]]:
    """The arms of ``ablation`` (module docstring), each of ``n`` pairs (default: the largest size all can reach).

    Raises ValueError if an arm has no pairs or fewer than ``n``. Each arm is a seeded sample of its pool in
    sampled order; ``mixed`` is the first ``n // 2`` of ``high`` plus the first ``n - n // 2`` of ``low``, shuffled.
    """
    pools = _arm_pools(pairs, ablation, low_max, high_min, easy_max, moderate_max)
    for arm, pool in pools.items():
        if not pool:
            raise ValueError(f"ablation {ablation!r}: arm {arm!r} has no pairs")
    available = min(len(pool) for pool in pools.values())
    if n is None:
        n = available
    if n < 1 or (ablation == "contrast" and n < 2):
        raise ValueError(f"n must be >= {2 if ablation == 'contrast' else 1}, got {n}")
    for arm, pool in pools.items():
        if len(pool) < n:
            raise ValueError(f"ablation {ablation!r}: arm {arm!r} has {len(pool)} pairs, {n} needed")
    arms = {arm: random.Random(f"{seed}:{ablation}:{arm}").sample(pool, n) for arm, pool in pools.items()}
    if ablation == "contrast":
        mixed = arms["high"][: n // 2] + arms["low"][: n - n // 2]
        random.Random(f"{seed}:{ablation}:mixed").shuffle(mixed)
        arms["mixed"] = mixed
    return {arm: arms[arm] for arm in ABLATIONS[ablation]}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def subset_stats(subsets: Mapping[str, Sequence[Pair]]) -> dict[str, dict[str, Any]]:
    """Per arm: size, mean contrast / chosen score / rejected score / complexity, share with a prefix, methods."""
    return {
        arm: {
            "n": len(ps),
            "mean_contrast": _mean([contrast(p) for p in ps]),
            "mean_chosen_score": _mean([float(p["chosen_score"]) for p in ps]),
            "mean_rejected_score": _mean([float(p["rejected_score"]) for p in ps]),
            "mean_complexity": _mean([float(p["complexity"]) for p in ps]),
            "share_shared_prefix": _mean([float(has_shared_prefix(p)) for p in ps]),
            "methods": dict(sorted(Counter(p["method"] for p in ps).items())),
        }
        for arm, ps in subsets.items()
    }


def write_subsets(
    subsets: Mapping[str, Sequence[Pair]], out_dir: str | Path, ablation: str, settings: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``<out_dir>/<ablation>_<arm>.jsonl`` per arm, then ``<out_dir>/<ablation>_stats.json``, atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file; --out-dir must be a folder")
    paths: dict[str, Path] = {}
    with output_lock(out_dir):
        for arm, ps in subsets.items():
            paths[arm] = out_dir / f"{ablation}_{arm}.jsonl"
            atomic_write_text(paths[arm], jsonl_text(ps))
        stats = {"ablation": ablation, **dict(settings or {}), "arms": subset_stats(subsets)}
        paths["stats"] = out_dir / f"{ablation}_stats.json"
        atomic_write_text(paths["stats"], json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return paths


# ------------------------------------------------------------------------------------------------ curate


def curate(
    pairs: Sequence[Pair],
    *,
    n: int | None = None,
    mix_weights: Mapping[str, float] | None = None,
    seed: int = 0,
    low_max: float = LOW_MAX,
    high_min: float = HIGH_MIN,
) -> list[Pair]:
    """``pairs`` as is; or a seeded sample of ``n``; or, with ``mix_weights`` over contrast buckets, :func:`mix`.

    With ``mix_weights`` and no ``n``, ``n`` is the largest size the buckets can supply (:func:`max_mix_size`).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if mix_weights is not None:
        groups: dict[str, list[Pair]] = {b: [] for b in CONTRAST_BUCKETS}
        for p in pairs:
            groups[contrast_bucket(contrast(p), low_max, high_min)].append(p)
        if n is None:
            unknown = [name for name in mix_weights if name not in groups]
            if not unknown:
                n = max_mix_size({b: len(g) for b, g in groups.items()}, mix_weights)
                if n == 0:
                    raise ValueError("the contrast buckets of the mix have no pairs")
        return mix(groups, mix_weights, n or 0, seed)
    if n is None:
        return list(pairs)
    if n > len(pairs):
        raise ValueError(f"asked for n={n} pairs, only {len(pairs)} selected")
    return random.Random(f"{seed}:sample").sample(list(pairs), n)


# ------------------------------------------------------------------------------------------------ CLI


def _parse_ints(text: str | None, flag: str) -> set[int] | None:
    if text is None:
        return None
    try:
        values = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers such as 1,2,3, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: expected comma-separated integers such as 1,2,3, got {text!r}")
    return values


def _parse_mix(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or name not in CONTRAST_BUCKETS or not math.isfinite(weight) or weight < 0 or name in weights:
            raise ValueError(
                f"--mix: expected BUCKET=WEIGHT,... with buckets among {', '.join(CONTRAST_BUCKETS)} (each once) "
                f"and weights >= 0, got {item!r}"
            )
        weights[name] = weight
    return weights


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", nargs="+", required=True, help="pair JSONL files (from `rs` / `mcts`)")
    parser.add_argument("--min-gap", type=float, default=None, help="least contrast chosen_score - rejected_score")
    parser.add_argument("--max-gap", type=float, default=None, help="most contrast")
    parser.add_argument("--min-chosen", type=float, default=None, help="least chosen_score")
    parser.add_argument("--max-chosen", type=float, default=None, help="most chosen_score")
    parser.add_argument("--complexity", default=None, help="keep these numbers of constraints, e.g. 1,2,3")
    parser.add_argument("--method", action="append", choices=METHODS, default=None, help="keep this method (repeat)")
    parser.add_argument("--shared-prefix", choices=("yes", "no"), default=None, help="keep pairs with / without one")
    parser.add_argument("--n", type=int, default=None, help="number of pairs (per arm for `subsets`)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same inputs and seed, same files")
    parser.add_argument("--low-max", type=float, default=LOW_MAX, help=f"low contrast: gap <= this ({LOW_MAX})")
    parser.add_argument("--high-min", type=float, default=HIGH_MIN, help=f"high contrast: gap >= this ({HIGH_MIN})")
    parser.add_argument("--easy-max", type=int, default=EASY_MAX, help=f"easy: complexity <= this ({EASY_MAX})")
    parser.add_argument(
        "--moderate-max", type=int, default=MODERATE_MAX, help=f"moderate: complexity <= this ({MODERATE_MAX})"
    )


def add_curate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``curate`` command's arguments (used by ``lm-suite if curate``)."""
    _add_common(parser)
    parser.add_argument("--out", required=True, help="output JSONL of the curated pairs")
    parser.add_argument("--mix", default=None, help="contrast-bucket proportions, e.g. high=0.5,low=0.5")
    parser.set_defaults(run=run_curate)
    return parser


def add_subsets_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``subsets`` command's arguments (used by ``lm-suite if subsets``)."""
    _add_common(parser)
    parser.add_argument("--ablation", required=True, choices=tuple(ABLATIONS), help="which ablation's arms to cut")
    parser.add_argument("--out-dir", required=True, help="folder for <ablation>_<arm>.jsonl and <ablation>_stats.json")
    parser.set_defaults(run=run_subsets)
    return parser


def _load_and_select(args: argparse.Namespace) -> tuple[list[Pair], list[str]]:
    """The read, validated, filtered and deduplicated pairs, and report lines on what was dropped."""
    contrast_bucket(0.0, args.low_max, args.high_min)  # validates the thresholds
    complexity_bucket(1, args.easy_max, args.moderate_max)
    pairs, failures = read_pairs_counted(args.pairs)
    shared = None if args.shared_prefix is None else args.shared_prefix == "yes"
    filtered = select(
        pairs, min_gap=args.min_gap, max_gap=args.max_gap, min_chosen=args.min_chosen, max_chosen=args.max_chosen,
        complexity=_parse_ints(args.complexity, "--complexity"), methods=args.method, shared_prefix=shared,
        dedupe=False,
    )
    unique = dedupe(filtered)
    lines = [
        f"read {len(pairs)} pairs from {len(args.pairs)} file(s) ({failures} failure records skipped)",
        f"selected {len(unique)} ({len(pairs) - len(filtered)} filtered out, {len(filtered) - len(unique)} duplicates)",
    ]
    return unique, lines


def _histogram(pairs: Sequence[Pair], low_max: float, high_min: float, easy_max: int, moderate_max: int) -> str:
    """Counts by method, contrast bucket and complexity bucket, with bars."""
    rows: list[tuple[str, str, int]] = []
    by_method = Counter(p["method"] for p in pairs)
    rows += [("method", m, by_method[m]) for m in sorted(by_method, key=lambda m: (m not in METHODS, m))]
    by_gap = Counter(contrast_bucket(contrast(p), low_max, high_min) for p in pairs)
    rows += [("contrast", b, by_gap[b]) for b in CONTRAST_BUCKETS]
    by_cplx = Counter(complexity_bucket(p["complexity"], easy_max, moderate_max) for p in pairs)
    rows += [("complexity", b, by_cplx[b]) for b in COMPLEXITY_BUCKETS]
    top = max((c for _, _, c in rows), default=0) or 1
    width = max(len(str(top)), 1)
    out, last = [], None
    for attr, value, count in rows:
        bar = "#" * round(30 * count / top)
        out.append(f"  {attr if attr != last else '':<10} {value:<8} {count:>{width}} {bar}".rstrip())
        last = attr
    return "\n".join(out)


def run_curate(args: argparse.Namespace) -> int:
    """Run the ``curate`` command."""
    try:
        out = Path(args.out)
        if out.is_dir():
            raise DataError(f"{out}: is a folder; --out must be a file path")
        with output_lock(out):
            pairs, lines = _load_and_select(args)
            result = curate(
                pairs, n=args.n, mix_weights=_parse_mix(args.mix), seed=args.seed, low_max=args.low_max,
                high_min=args.high_min,
            )
            atomic_write_text(out, jsonl_text(result))
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"wrote {len(result)} pairs to {out}")
    print(_histogram(result, args.low_max, args.high_min, args.easy_max, args.moderate_max))
    return 0


def _stats_table(stats: Mapping[str, Mapping[str, Any]], pools: Mapping[str, int]) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = f"  {'arm':<10} {'n':>7} {'pool':>7} {'contrast':>9} {'chosen':>7} {'rejected':>8} {'cplx':>6} {'prefix':>7}"
    rows = [head]
    for arm, s in stats.items():
        pool = pools.get(arm)
        rows.append(
            f"  {arm:<10} {s['n']:>7} {'-' if pool is None else pool:>7} {fmt(s['mean_contrast']):>9} "
            f"{fmt(s['mean_chosen_score']):>7} {fmt(s['mean_rejected_score']):>8} {fmt(s['mean_complexity']):>6} "
            f"{fmt(s['share_shared_prefix']):>7}"
        )
    return "\n".join(rows)


def run_subsets(args: argparse.Namespace) -> int:
    """Run the ``subsets`` command."""
    try:
        with output_lock(Path(args.out_dir)):  # before reading: a second run stops at once
            pairs, lines = _load_and_select(args)
            thresholds = dict(
                low_max=args.low_max, high_min=args.high_min, easy_max=args.easy_max, moderate_max=args.moderate_max
            )
            subsets = make_subsets(pairs, args.ablation, args.n, args.seed, **thresholds)
            pools = {arm: len(p) for arm, p in _arm_pools(pairs, args.ablation, **thresholds).items()}
            filters = {
                name: getattr(args, name)
                for name in ("min_gap", "max_gap", "min_chosen", "max_chosen", "complexity", "method", "shared_prefix")
                if getattr(args, name) is not None
            }
            n = len(next(iter(subsets.values())))
            settings = {"n": n, "seed": args.seed, **thresholds, "filters": filters, "pools": pools}
            paths = write_subsets(subsets, args.out_dir, args.ablation, settings)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"ablation {args.ablation}: {len(subsets)} arms of {settings['n']} pairs in {Path(args.out_dir)}")
    print(_stats_table(subset_stats(subsets), pools))
    print(f"stats: {paths['stats']}")
    return 0
