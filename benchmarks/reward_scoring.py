"""Scoring throughput: Critic-RM with m self-written critiques against the plain scalar reward model.

What is compared
    Both sides are ``CriticRM`` built fresh on the same backbone with the same seed (random init): the plain reward
    model (``use_critiques=False``: one forward over prompt + response) and Critic-RM with ``num_critiques=m`` for
    each ``--m`` (greedy for m = 1, ``critique_temperature=0.8`` above; ``max_critique_tokens=--critique-tokens``;
    then one forward over prompt + response + request + critique per critique). Both score every pair of
    ``--pairs`` (chosen and rejected) through the path users take: rows from ``core.records.read_records``,
    ``pipelines.score_rewards.score_rows`` with ``--batch-size`` responses per call.

    An untrained model rarely emits EOS early, so critiques run to ``max_critique_tokens``: the worst case (the
    "crit tok" column gives the mean critique length actually generated).

    Each round scores all pairs once with every model, in turn, so outside load falls on every side alike; the
    table keeps each model's best of ``--repeats`` rounds, after one warm-up batch. Within the timed run,
    ``generate_critiques`` (sampling + decoding the texts) and ``hidden_states`` (the backbone forward feeding the
    reward head) are wrapped with a timer, so the table splits the time into generation, reward forward and the
    rest (tokenizing, padding, reward head, bookkeeping). "load" is the number of cores other programs used while a
    model's timed rounds ran (from /proc/stat, as in ``dpo_vs_trl.py``): when it plus ``--threads`` exceeds the
    cores, the figures are skewed (runs shorter than ~0.1 s give a coarse per-row figure; the summary line is better).

How to run
    python benchmarks/reward_scoring.py                                   # tiny-llama, 1 thread, m = 1 2 4 8
    python benchmarks/reward_scoring.py --backbone small-llama --m 1 2 4 --threads 1 2 --repeats 5

The last lines are the pairs/s ratios plain/Critic-RM (how many times faster the plain reward model scores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cpu_load import machine_busy_seconds, own_cpu_seconds  # noqa: E402  (benchmarks/ is the script's folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="tiny-llama", help="backbone preset or hf:NAME (default tiny-llama)")
    p.add_argument("--pairs", default=str(ROOT / "data" / "rewardbench_tiny.jsonl"), help="pairs file (JSONL)")
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8], help="critiques per response (default 1 2 4 8)")
    p.add_argument("--critique-tokens", type=int, default=48, help="max_critique_tokens (default 48)")
    p.add_argument("--batch-size", type=int, default=16, help="responses per score_rows call (default 16)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads, one table each (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept (default 3)")
    args = p.parse_args(argv)
    if min(args.m) < 1 or args.critique_tokens < 1 or args.batch_size < 1 or args.repeats < 1 or min(args.threads) < 1:
        p.error("--m, --critique-tokens, --batch-size, --repeats and --threads must be >= 1")
    return args


class Timed:
    """Wraps a model's ``generate_critiques`` and ``hidden_states`` (instance attributes) to time each phase."""

    def __init__(self, model: Any) -> None:
        self.model, self.gen, self.fwd, self.crit_tokens, self.critiques = model, 0.0, 0.0, 0, 0
        generate, hidden = model.generate_critiques, model.hidden_states

        def timed_generate(requests: dict[str, Any], seed: int = 0) -> Any:
            t = time.perf_counter()
            out, mask, texts = generate(requests, seed)
            self.gen += time.perf_counter() - t
            self.crit_tokens += int(mask[:, requests["input_ids"].shape[1]:].sum())  # generated tokens up to EOS
            self.critiques += out.shape[0]
            return out, mask, texts

        def timed_hidden(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            h = hidden(*a, **k)
            self.fwd += time.perf_counter() - t
            return h

        model.generate_critiques, model.hidden_states = timed_generate, timed_hidden

    def run(self, rows: list[Any], batch_size: int) -> dict[str, float]:
        from pipelines.score_rewards import score_rows

        self.gen = self.fwd = 0.0
        self.crit_tokens = self.critiques = 0
        busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        score_rows(self.model, rows, batch_size)
        wall = time.perf_counter() - t0
        others = max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0))
        return {"s": wall, "gen": self.gen, "fwd": self.fwd, "others": others,
                "crit_tok": self.crit_tokens / self.critiques if self.critiques else 0.0}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    from core.errors import DataError
    from core.records import read_records
    from lightning_modules.critic_rm.module import CriticRM

    try:
        rows = read_records(args.pairs)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    n_pairs = len(rows)
    models: dict[str, Timed] = {"plain": Timed(CriticRM(backbone=args.backbone, use_critiques=False).eval())}
    for m in args.m:
        models[f"critic m={m}"] = Timed(CriticRM(
            backbone=args.backbone, use_critiques=True, num_critiques=m, critique_temperature=0.8 if m > 1 else 0.0,
            max_critique_tokens=args.critique_tokens).eval())
    params = sum(p.numel() for p in models["plain"].model.policy.parameters())
    print(f"backbone={args.backbone} ({params / 1e6:.2f}M params, random init) pairs={n_pairs} ({2 * n_pairs} "
          f"responses) from {args.pairs}; batch={args.batch_size} responses; max_critique_tokens="
          f"{args.critique_tokens}; repeats={args.repeats} (best kept); torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {os.cpu_count()} cores, loadavg before {os.getloadavg()[0]:.2f}", flush=True)

    summary: list[str] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for t in models.values():  # warm-up: one batch of responses each
            t.run(rows[: max(1, args.batch_size // 2)], args.batch_size)
        best: dict[str, dict[str, float]] = {}
        load: dict[str, list[float]] = {name: [0.0, 0.0] for name in models}  # other programs' CPU s, wall s
        for _ in range(args.repeats):
            for name, t in models.items():
                r = t.run(rows, args.batch_size)
                load[name][0] += r["others"]
                load[name][1] += r["s"]
                if name not in best or r["s"] < best[name]["s"]:
                    best[name] = r
        plain = best["plain"]["s"]
        header = (f"{'model':<13}{'thr':>4}{'pairs/s':>9}{'resp/s':>9}{'seconds':>9}{'generate':>10}{'reward fwd':>11}"
                  f"{'other':>7}{'crit tok':>9}{'load':>6}{'ratio':>7}")
        print(f"\nthreads={threads}  (generate / reward fwd / other: seconds of the best run; ratio: plain pairs/s "
              f"over this model's)\n{header}\n{'-' * len(header)}")
        for name, r in best.items():
            other = r["s"] - r["gen"] - r["fwd"]
            print(f"{name:<13}{threads:>4}{n_pairs / r['s']:>9.1f}{2 * n_pairs / r['s']:>9.1f}{r['s']:>9.3f}"
                  f"{r['gen']:>10.3f}{r['fwd']:>11.3f}{other:>7.3f}{r['crit_tok']:>9.1f}"
                  f"{load[name][0] / load[name][1]:>6.2f}{r['s'] / plain:>7.1f}")
        others = sum(v[0] for v in load.values()) / sum(v[1] for v in load.values())
        cores = os.cpu_count() or 1
        verdict = ("" if others <= 0.1 else " -- timings are skewed (fewer free cores than threads); rerun on a quieter"
                   " machine" if others + threads > cores + 0.1 else " -- a core per thread stayed free, but shared"
                   " caches and memory bandwidth may still slow the run a little")
        print(f"outside load during the timed rounds: other programs used {others:.2f} of {cores} cores on "
              f"average{verdict}")
        for name, r in best.items():
            if name != "plain":
                share = r["gen"] / r["s"]
                summary.append(f"threads={threads} pairs/s ratio plain/{name}: {r['s'] / plain:.1f} "
                               f"(generation {share:.0%} of Critic-RM's time)")
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
