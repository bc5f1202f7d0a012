"""Throughput of the instruction-following verifiers (IFEval types, Zhou et al. 2023): strict and loose scoring.

What is measured
    ``--n`` (default 200,000) synthetic (prompt, response) pairs are scored on one core (the process is pinned to
    one CPU where the OS allows). Each prompt has 1-4 mutually compatible constraints drawn with
    ``sample_constraints`` (all IFEval types except ``language:response_language``, which needs ``langdetect``;
    ``--with-language`` adds it when installed), bound once before timing, as a data pipeline would. Responses
    are synthetic and seeded: 1-25 sentences drawn from a pool of generated sentences, in blank-line or ``***``
    paragraphs, with markdown and structure added so that verifiers see both passing and failing inputs: for
    each of the prompt's constraints the generator tries to follow it with probability ``--follow`` (title,
    P.S., bullets, sections, quotes, end phrase, JSON, two responses, repeated prompt, case, commas, ...), and
    adds unrelated features at random; a preamble line or a closing line is added to some responses, so the
    loose variants matter.

    Three timed passes over the same pairs (generation is not timed):

    - strict: ``score(response, constraints)``;
    - loose: ``score(response, constraints, loose=True)`` (the strict check first, then the other loose variants
      of the response for the constraints that fail, as IFEval's loose accuracy);
    - strict+loose: ``score_strict_loose`` (both results from one call, the loose part reusing the strict one).

    responses/s = pairs / wall time of the pass, with the garbage collector paused during each pass (as
    ``timeit`` does). ``--per-type`` adds the strict time per constraint type.

    With ``langdetect`` installed (it is in the ``dev`` extra) the two all-case types also run IFEval's English
    check, which dominates their cost; the run prints whether it is installed.

    Prompt synthesis is timed too: ``--synth-n`` (default 48,000, the paper's count) unique prompts written to a
    temporary JSONL through the ``lm-suite if synth`` code path
    (:func:`~pipelines.instruction_following.synth.write_prompts`), on the same core.

How to run
    python benchmarks/constraints_throughput.py             # 200,000 pairs, about a minute on one core
    python benchmarks/constraints_throughput.py --n 20000 --per-type
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.instruction_following.constraints import (
    CONSTRAINT_TYPES,
    WORD_LIST,
    Constraint,
    SampleContext,
    _detect_cached,
    _langdetect_or_none,
    _langdetect_state,
    sample_constraints,
)
from pipelines.instruction_following.scoring import score, score_strict_loose  # noqa: E402
from pipelines.instruction_following.synth import write_prompts  # noqa: E402

FORMS = ("story", "letter", "poem", "essay", "product description", "blog post", "speech", "riddle", "summary")
FILLER = "the a of and to in is it that was for on with as by at from this be have not are".split()
T = TypeVar("T")
ABBREVIATED = ("Mr. Lee", "e.g. this", "about 3.14 units", "at 5 p.m. sharp", "Dr. Roe", "and so on...")


def make_sentence_pool(rng: random.Random, size: int) -> list[str]:
    """Sentences of 4-18 words with some commas, capitals, abbreviations and varied final punctuation."""
    vocab = list(WORD_LIST) + FILLER * 3
    pool: list[str] = []
    for _ in range(size):
        words = rng.choices(vocab, k=rng.randint(4, 18))
        if rng.random() < 0.3:
            words[rng.randrange(len(words))] += ","
        if rng.random() < 0.15:
            i = rng.randrange(len(words))
            words[i] = words[i].upper()
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(ABBREVIATED))
        sentence = " ".join(words).rstrip(",")
        pool.append(sentence[0].upper() + sentence[1:] + rng.choice(".....?!"))
    return pool


def make_prompt(rng: random.Random) -> SampleContext:
    topic = rng.sample(WORD_LIST, 2)
    prompt = f"Write a {rng.choice(FORMS)} about the {topic[0]} and the {topic[1]}."
    return SampleContext(prompt=prompt, topic_words=tuple(topic))


def make_response(
    rng: random.Random, pool: list[str], ctx: SampleContext, constraints: list[Constraint], p: float
) -> str:
    """A synthetic response that tries to follow each constraint with probability ``p``."""
    want = {c.id: c.kwargs for c in constraints if rng.random() < p}
    if "detectable_format:constrained_response" in want:
        return rng.choice(pool) + " " + rng.choice(("My answer is yes.", "My answer is no.", "My answer is maybe."))
    if "detectable_format:json_format" in want:
        body = json.dumps({"answer": " ".join(rng.sample(pool, 2)), "keywords": rng.sample(WORD_LIST, 2)})
        return f"```json\n{body}\n```" if rng.random() < 0.5 else body

    n_par = rng.randint(1, 4)
    if "length_constraints:number_paragraphs" in want:
        n_par = want["length_constraints:number_paragraphs"]["num_paragraphs"]
    if "length_constraints:nth_paragraph_first_word" in want:
        n_par = want["length_constraints:nth_paragraph_first_word"]["num_paragraphs"]
    n_sent = rng.randint(1, 25)
    if "length_constraints:number_sentences" in want:
        kw = want["length_constraints:number_sentences"]
        n_sent = max(1, kw["num_sentences"] - 1) if kw["relation"] == "less than" else kw["num_sentences"] + 1
    sentences = rng.choices(pool, k=max(n_sent, n_par))
    paragraphs = [" ".join(sentences[i::n_par]) for i in range(n_par)]

    if "length_constraints:nth_paragraph_first_word" in want:
        kw = want["length_constraints:nth_paragraph_first_word"]
        i = kw["nth_paragraph"] - 1
        paragraphs[i] = kw["first_word"].capitalize() + " " + paragraphs[i]
    if "keywords:existence" in want or rng.random() < 0.2:
        words = want.get("keywords:existence", {}).get("keywords") or list(ctx.topic_words)
        paragraphs[0] += " It is about " + " and ".join(words) + "."
    if "keywords:frequency" in want:
        kw = want["keywords:frequency"]
        times = kw["frequency"] - 1 if kw["relation"] == "less than" else kw["frequency"]
        paragraphs[-1] += "".join(f" The {kw['keyword']} again." for _ in range(times))
    if "detectable_format:number_highlighted_sections" in want or rng.random() < 0.2:
        n = want.get("detectable_format:number_highlighted_sections", {}).get("num_highlights", 1)
        paragraphs[0] += "".join(f" *highlight {i}*" for i in range(n))
    if "detectable_content:number_placeholders" in want or rng.random() < 0.1:
        n = want.get("detectable_content:number_placeholders", {}).get("num_placeholders", 1)
        paragraphs[-1] += "".join(f" [field {i}]" for i in range(n))
    if "detectable_format:number_bullet_lists" in want or rng.random() < 0.2:
        n = want.get("detectable_format:number_bullet_lists", {}).get("num_bullets", rng.randint(1, 5))
        paragraphs.append("\n".join(f"{rng.choice('*-')} {rng.choice(pool)}" for _ in range(n)))

    if "detectable_format:multiple_sections" in want:
        kw = want["detectable_format:multiple_sections"]
        parts = [f"{kw['section_spliter']} {i + 1}\n{rng.choice(pool)}" for i in range(kw["num_sections"])]
        paragraphs = [paragraphs[0], *parts]
    divider = "\n\n***\n\n" if "length_constraints:number_paragraphs" in want or rng.random() < 0.2 else "\n\n"
    response = divider.join(paragraphs)

    if "detectable_format:title" in want or rng.random() < 0.2:
        response = f"<<The {rng.choice(WORD_LIST)}>>\n\n{response}"
    if "combination:repeat_prompt" in want:
        response = f"{ctx.prompt}\n{response}"
    if "detectable_content:postscript" in want or rng.random() < 0.1:
        marker = want.get("detectable_content:postscript", {}).get("postscript_marker", "P.S.")
        response += f"\n\n{marker} {rng.choice(pool)}"
    if "startend:end_checker" in want:
        response += " " + want["startend:end_checker"]["end_phrase"]
    if "combination:two_responses" in want:
        response += "\n******\n" + " ".join(rng.choices(pool, k=3))
    if "punctuation:no_comma" in want:
        response = response.replace(",", "")
    if "change_case:english_capital" in want or "change_case:capital_word_frequency" in want:
        response = response.upper()
    elif "change_case:english_lowercase" in want:
        response = response.lower()
    if "keywords:forbidden_words" in want:
        for word in want["keywords:forbidden_words"]["forbidden_words"]:
            response = response.replace(word, "thing")
    if "startend:quotation" in want or rng.random() < 0.05:
        response = f'"{response}"'
    if rng.random() < 0.25:
        response = "Sure, here is my answer:\n" + response
    if rng.random() < 0.1:
        response += "\nHope this helps!"
    return response


def pin_to_one_core() -> str:
    if hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of (prompt, response) pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--follow", type=float, default=0.5, help="probability the generator follows a constraint")
    parser.add_argument("--with-language", action="store_true", help="include language:response_language")
    parser.add_argument("--per-type", action="store_true", help="also time the strict check per constraint type")
    parser.add_argument("--without-langdetect", action="store_true", help="score as if langdetect were missing")
    parser.add_argument("--synth-n", type=int, default=48_000, help="prompts to synthesise in the synthesis timing")
    args = parser.parse_args(argv)

    pinned = pin_to_one_core()
    if args.without_langdetect:
        _langdetect_state["module"] = None
    ids = [cid for cid in CONSTRAINT_TYPES if args.with_language or cid != "language:response_language"]
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    pool = make_sentence_pool(rng, 5000)
    pairs: list[tuple[str, list[Constraint]]] = []
    for _ in range(args.n):
        ctx = make_prompt(rng)
        constraints = sample_constraints(rng, rng.randint(1, 4), ctx, ids=ids)
        pairs.append((make_response(rng, pool, ctx, constraints, args.follow), constraints))
    gen_s = time.perf_counter() - t0
    n_constraints = sum(len(c) for _, c in pairs)
    mean_chars = sum(len(r) for r, _ in pairs) / len(pairs)
    print(f"python {platform.python_version()} on {platform.machine()}, {pinned}; langdetect "
          f"{'installed' if _langdetect_or_none() is not None else 'not installed'}")
    print(
        f"{args.n} pairs, {n_constraints} constraints ({n_constraints / args.n:.2f} per prompt), "
        f"responses {mean_chars:.0f} characters on average; generated in {gen_s:.1f} s (not timed)"
    )

    def timed(fn: Callable[[str, list[Constraint]], T]) -> tuple[list[T], float]:
        _detect_cached.cache_clear()  # each pass starts with a cold language-detection cache
        gc.collect()
        gc.disable()  # as timeit: collector pauses depend on what earlier passes left alive, not on the verifiers
        try:
            t0 = time.perf_counter()
            out = [fn(r, c) for r, c in pairs]
            return out, time.perf_counter() - t0
        finally:
            gc.enable()

    strict, strict_s = timed(score)
    loose, loose_s = timed(partial(score, loose=True))
    both, both_s = timed(score_strict_loose)
    assert [b[0] for b in both] == strict and [b[1] for b in both] == loose

    followed_strict = sum(sum(s.per_constraint) for s in strict) / n_constraints
    followed_loose = sum(sum(s.per_constraint) for s in loose) / n_constraints
    print(f"instructions followed: strict {followed_strict:.3f}, loose {followed_loose:.3f}")
    print(f"strict:       {args.n / strict_s:10,.0f} responses/s  ({strict_s:.1f} s)")
    print(f"loose:        {args.n / loose_s:10,.0f} responses/s  ({loose_s:.1f} s)")
    print(f"strict+loose: {args.n / both_s:10,.0f} responses/s  ({both_s:.1f} s)")

    if args.per_type:
        spent: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for response, constraints in pairs:
            for c in constraints:
                t = time.perf_counter()
                c.check(response)
                spent[c.id] += time.perf_counter() - t
                count[c.id] += 1
        print("strict check per type (microseconds per check, checks):")
        for cid in sorted(spent, key=lambda k: -spent[k] / count[k]):
            print(f"  {cid:48s} {1e6 * spent[cid] / count[cid]:8.1f}  {count[cid]:8d}")

    with tempfile.TemporaryDirectory() as tmp:
        report = write_prompts(Path(tmp) / "prompts.jsonl", args.synth_n, args.seed)
    print(f"synthesis:    {args.synth_n / report.seconds:10,.0f} prompts/s  ({args.synth_n} unique prompts written "
          f"in {report.seconds:.1f} s)")


if __name__ == "__main__":
    main()
