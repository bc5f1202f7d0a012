"""Side-by-side DPO training-step benchmark: this suite's ``DPO`` LightningModule against TRL's ``DPOTrainer``.

What is compared
    Both sides train the same model (preset ``tiny-llama-bench`` on CPU: 4 layers, hidden 256, vocabulary 4096;
    ``llama-1b-bench`` in bf16 on a GPU), from the same initial weights (``build_causal_lm(preset, seed=0)``), with
    a frozen reference copy held in memory, DPO sigmoid loss, beta 0.1, AdamW as each side builds it by default
    (ours: ``configure_optimizers``; TRL: ``adamw_torch_fused``), lr 5e-4, no weight decay, no gradient clipping,
    constant schedule, and the same synthetic token ids: prompts of exactly ``--prompt-len``
    tokens, chosen and rejected responses of exactly ``--response-len`` tokens each, ``--batch-size`` pairs per
    step, random ids (special tokens excluded, seeded). ``--shared-response-frac`` makes that fraction of the
    response tokens a common beginning of chosen and rejected (MCTS-style branching); 0 means only the prompt is
    shared.

    - ours: ``lightning_modules.dpo.module.DPO(reference="copy")``, batches from ``collate_pairs(..., packed=True)``
      (one row per pair, prompt once) and, with ``--unpacked``, ``packed=False`` (two rows per pair). A plain loop
      times ``module._step`` (policy + reference forward) + backward + ``AdamW.step`` (no Trainer), so only the
      step itself is measured; batches are collated beforehand.
    - TRL: ``trl.DPOTrainer`` with ``DPOConfig`` (no eval, no logging, no saving, fp32 on CPU, gradient
      checkpointing off, sequential sampler so both sides see the same first batch) and ``ref_model`` a copy of
      the policy. Its dataset holds the same ids as ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` columns,
      the format TRL's own tokenisation produces and its collator reads; TRL's text preprocessing
      (``_prepare_dataset``) is bypassed, as it cannot take ids, and is not timed either way. A callback times
      ``on_step_begin`` -> ``on_step_end`` (forward, backward, optimizer step).

    Warm-up steps are discarded. tokens/s counts prompt + response tokens of both sequences of every pair, as if
    unpacked: ``batch * (2 * prompt + 2 * response)`` per step (4096 with the defaults), for both sides, divided
    by the median wall time of the timed steps (every step has the same shapes, and the median shrugs off bursts
    of load from other programs; the mean-based figure is printed beside it). Each side runs in its own spawned
    process so memory peaks do not mix: on CPU the peak RSS (``ru_maxrss``) and its increase over the RSS
    measured after imports (weights, reference copy, optimizer state, activations); on a GPU
    ``torch.cuda.max_memory_allocated``. At step 0 the policy equals the reference, so both losses must be
    ln 2 = 0.6931, and the first-step policy log-probs (``logps/chosen`` / ``logps/rejected``, batch means of the
    summed response log-probs) must agree.

    By default the side processes run at the same time but take turns, one training step at a time (after all
    have built their models), so load from other programs on a shared machine falls on every side alike instead
    of on whichever side happened to run during it; ``--sequential`` runs them one after the other instead.
    The table also gives the process CPU seconds per step (all threads; with more threads than free cores this
    includes OpenMP spin-waiting), and the run reports how many cores other programs used meanwhile: on a
    shared 2-core machine even one busy program slows torch's default 2 threads several-fold (OpenMP
    barriers), the smaller operations of the packed layout more than TRL's, so rerun when it warns.

How to run
    python benchmarks/dpo_vs_trl.py                    # CPU defaults: about 2 minutes on 2 idle cores
    python benchmarks/dpo_vs_trl.py --unpacked --verbose  # + ours with packed=False, and every step's time
    python benchmarks/dpo_vs_trl.py --steps 10 --shared-response-frac 0.5 --threads 1
    python benchmarks/dpo_vs_trl.py --device cuda --flex  # GPU: llama-1b-bench in bf16, FlexAttention for ours

The last printed line is the tokens/s ratio, e.g. ``tokens/s ratio (ours/TRL): 2.31``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue as queue_module
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LR = 5e-4
BETA = 0.1
SEED = 0


# ------------------------------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per side (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per side (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--prompt-len", type=int, default=192, help="prompt tokens (default 192)")
    p.add_argument("--response-len", type=int, default=64, help="tokens of each response (default 64)")
    p.add_argument("--shared-response-frac", type=float, default=0.0,
                   help="fraction of response tokens common to chosen and rejected at their start (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--flex", action="store_true", help="ours with attention='flex_attention' (CUDA only)")
    p.add_argument("--unpacked", action="store_true", help="also time ours with packed=False (for information)")
    p.add_argument("--verbose", action="store_true", help="print every timed step's wall / CPU seconds")
    p.add_argument("--sequential", action="store_true",
                   help="run the sides one after the other instead of taking turns step by step")
    p.add_argument("--preset", default=None,
                   help="model preset (default: tiny-llama-bench on CPU, llama-1b-bench on CUDA)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.prompt_len < 1 or args.response_len < 2:
        p.error("need --steps >= 1, --warmup >= 0, --batch-size >= 1, --prompt-len >= 1, --response-len >= 2")
    if not 0.0 <= args.shared_response_frac <= 1.0:
        p.error("--shared-response-frac must lie in [0, 1]")
    return args


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return requested


def make_pairs(tokenizer: Any, n: int, prompt_len: int, response_len: int, shared_frac: float,
               seed: int = SEED) -> list[tuple[list[int], list[int], list[int]]]:
    """``n`` (prompt, chosen, rejected) id lists; chosen and rejected share exactly their first k tokens."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    k = min(round(shared_frac * response_len), response_len - 1)  # at least one differing token
    pairs = []
    for _ in range(n):
        prompt = rng.choices(vocab, k=prompt_len)
        chosen = rng.choices(vocab, k=response_len)
        rejected = chosen[:k] + rng.choices(vocab, k=response_len - k)
        while rejected[k] == chosen[k]:  # branch exactly at k
            rejected[k] = rng.choice(vocab)
        pairs.append((prompt, chosen, rejected))
    return pairs


# ---------------------------------------------------------------------------------------------- measurement
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (zeros where unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory_report(device: str, baseline_rss: int) -> dict[str, float]:
    if device == "cuda":
        import torch

        return {"peak_mem": torch.cuda.max_memory_allocated() / 2**30, "mem_delta": math.nan}
    peak = _peak_rss_bytes()
    return {"peak_mem": peak / 2**30, "mem_delta": (peak - baseline_rss) / 2**30}


def _describe(opt: Any) -> str:
    opt = getattr(opt, "optimizer", opt)  # accelerate wraps the Trainer's optimizer
    flags = ", ".join(f"{k}={opt.defaults.get(k)}" for k in ("foreach", "fused"))
    return f"{type(opt).__name__}({flags})"


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import transformers

    transformers.logging.set_verbosity_error()


def _init_torch(cfg: dict[str, Any]) -> None:
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(SEED)


class Turns:
    """Round-robin turns between the side processes: one step at a time, so outside load hits every side alike.

    Each side builds its models, then waits at a barrier; afterwards side i runs a step only when the shared turn
    is i, and hands the turn to the next side still running. ``None`` (``--sequential``) disables all of it.
    """

    def __init__(self, ctx: Any, n: int) -> None:
        self.n = n
        self.barrier = ctx.Barrier(n)
        self.cond = ctx.Condition()
        self.turn = ctx.Value("i", 0, lock=False)
        self.active = ctx.Array("i", [1] * n, lock=False)

    def ready(self) -> None:
        self.barrier.wait(timeout=1800)

    def acquire(self, me: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn.value == me)

    def release(self, me: int, last: bool = False) -> None:
        with self.cond:
            if last:
                self.active[me] = 0
            if self.turn.value == me:
                nxt = [(me + k) % self.n for k in range(1, self.n + 1) if self.active[(me + k) % self.n]]
                self.turn.value = nxt[0] if nxt else -1
            self.cond.notify_all()

    def abort(self, me: int) -> None:
        self.barrier.abort()
        self.release(me, last=True)


class StepClock:
    """Wall and process-CPU time of each step, in turn with the other sides when ``turns`` is set."""

    def __init__(self, device: str, turns: Turns | None, me: int, total: int) -> None:
        self.device, self.turns, self.me, self.total = device, turns, me, total
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def begin(self) -> None:
        if self.turns is not None:
            self.turns.acquire(self.me)
        _sync(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def end(self) -> None:
        _sync(self.device)
        self.wall.append(time.perf_counter() - self.t0)
        self.cpu.append(time.process_time() - self.c0)
        if self.turns is not None:
            self.turns.release(self.me, last=len(self.wall) == self.total)

    def summary(self, warmup: int) -> dict[str, Any]:
        wall, cpu = self.wall[warmup:], self.cpu[warmup:]
        return {"seconds": sum(wall), "median_step": statistics.median(wall), "cpu_step": sum(cpu) / len(cpu),
                "step_times": wall, "step_cpu": cpu}


# ---------------------------------------------------------------------------------------------------- ours
def run_ours(cfg: dict[str, Any], packed: bool, clock: StepClock) -> dict[str, Any]:
    _quiet()
    import torch

    from core.packing import TokenizedPair, collate_pairs
    from lightning_modules.dpo.module import DPO

    _init_torch(cfg)
    device = cfg["device"]
    baseline = _rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    module = DPO(backbone=cfg["preset"], reference="copy", dtype=cfg["dtype"], attention=cfg["attention"],
                 beta=BETA, loss_type="sigmoid", lr=LR, init_seed=SEED).to(device)
    module.train()
    opt = module.configure_optimizers()["optimizer"]  # the suite's AdamW, as a Trainer would build it
    pad_id = module.tokenizer.pad_token_id
    b = cfg["batch_size"]
    pairs = [TokenizedPair(p, c, r, index=i) for i, (p, c, r) in enumerate(cfg["pairs"])]
    batches = []
    for s in range(cfg["warmup"] + cfg["steps"]):
        batch = collate_pairs(pairs[s * b:(s + 1) * b], pad_id, packed=packed)
        batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})

    if clock.turns is not None:
        clock.turns.ready()
    tokens, first = 0, {}
    for s, batch in enumerate(batches):
        clock.begin()
        loss, metrics = module._step(batch, "train")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.end()
        if s == 0:
            first = {"loss": loss.item(), "logps_chosen": metrics["logps/chosen"].float().mean().item(),
                     "logps_rejected": metrics["logps/rejected"].float().mean().item(),
                     "rows": tuple(batch["input_ids"].shape)}
        if s >= cfg["warmup"]:
            tokens += int(batch["num_tokens"])
    return {"name": "ours (packed)" if packed else "ours (unpacked)", "tokens": tokens, "optim": _describe(opt),
            "threads": torch.get_num_threads(), **clock.summary(cfg["warmup"]), **first,
            **_memory_report(device, baseline)}


# ----------------------------------------------------------------------------------------------------- TRL
def run_trl(cfg: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    _quiet()
    import copy

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from core.backbones import build_causal_lm, load_tokenizer

    _init_torch(cfg)
    device = cfg["device"]
    baseline = _rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    class IdsDPOTrainer(DPOTrainer):
        """DPOTrainer fed ids: skips the text tokenisation and records what the first step sees."""

        first: dict[str, Any] = {}

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already the prompt_ids / chosen_ids / rejected_ids columns its tokeniser writes

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self.first:
                m = self._metrics["train"]
                self.first = {
                    "loss": float(loss.item()), "logps_chosen": m["logps/chosen"][0],
                    "logps_rejected": m["logps/rejected"][0], "rows": tuple(inputs["input_ids"].shape),
                    "seen_tokens": int(inputs["attention_mask"].sum()),
                    "seen_completion": int(inputs["completion_mask"].sum()),
                }
            return loss

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if clock.turns is not None:
                clock.turns.ready()

        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    tok = load_tokenizer(cfg["preset"])
    model = build_causal_lm(cfg["preset"], dtype=cfg["dtype"], seed=SEED)
    ref_model = copy.deepcopy(model)
    data = Dataset.from_dict({
        "prompt_ids": [p for p, _, _ in cfg["pairs"]],
        "chosen_ids": [c for _, c, _ in cfg["pairs"]],
        "rejected_ids": [r for _, _, r in cfg["pairs"]],
    })
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=cfg["batch_size"], max_steps=cfg["warmup"] + cfg["steps"],
            max_length=None, beta=BETA, loss_type=["sigmoid"], learning_rate=LR, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
            bf16=device == "cuda", fp16=False, gradient_checkpointing=False, use_cpu=device == "cpu",
            train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_pin_memory=device == "cuda",
            report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
            seed=SEED, precompute_ref_log_probs=False,
        )
        trainer = IdsDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data,
                                processing_class=tok, callbacks=[StepTimer()])
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        trainer.train()
    per_step = cfg["batch_size"] * (2 * cfg["prompt_len"] + 2 * cfg["response_len"])
    return {"name": "TRL DPOTrainer", "tokens": per_step * cfg["steps"], "optim": _describe(trainer.optimizer),
            "threads": torch.get_num_threads(),
            **clock.summary(cfg["warmup"]), **trainer.first, **_memory_report(device, baseline)}


# ------------------------------------------------------------------------------------------------- driver
def _worker(side: str, me: int, cfg: dict[str, Any], turns: Turns | None, queue: Any) -> None:
    clock = StepClock(cfg["device"], turns, me, cfg["warmup"] + cfg["steps"])
    try:
        result = run_trl(cfg, clock) if side == "trl" else run_ours(cfg, side == "packed", clock)
    except BaseException as e:  # report, and do not leave the other sides waiting for this one
        import traceback

        if turns is not None:
            turns.abort(me)
        result = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    queue.put((side, result))


def run_sides(sides: list[str], cfg: dict[str, Any], interleave: bool) -> dict[str, dict[str, Any]]:
    """Each side in its own spawned process: all at once taking turns per step, or one after the other."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    turns = Turns(ctx, len(sides)) if interleave else None
    procs = [ctx.Process(target=_worker, args=(side, i, cfg, turns, queue)) for i, side in enumerate(sides)]
    results: dict[str, dict[str, Any]] = {}
    groups = [procs] if interleave else [[p] for p in procs]
    for group in groups:
        for p in group:
            p.start()
        pending = {sides[procs.index(p)]: p for p in group}
        while pending:
            try:
                side, result = queue.get(timeout=5)
            except queue_module.Empty:  # a side that died without reporting (killed, out of memory, ...)
                for side, p in list(pending.items()):
                    if not p.is_alive() and p.exitcode != 0:
                        results[side] = {"error": f"process exited with code {p.exitcode} without a result"}
                        if turns is not None:
                            turns.abort(sides.index(side))
                        del pending[side]
                continue
            results[side] = result
            pending.pop(side, None)
            if "error" not in result:
                print(f"  finished {result['name']}: {result['seconds']:.1f} s for {cfg['steps']} timed steps",
                      flush=True)
        for p in group:
            p.join()
    errors = {side: r["error"] for side, r in results.items() if "error" in r}
    if errors:
        raise RuntimeError("\n".join(f"{side} run failed:\n{e}" for side, e in errors.items()))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.flex and device != "cuda":
        raise SystemExit("--flex needs CUDA (FlexAttention's sparse kernels)")
    preset = args.preset or ("llama-1b-bench" if device == "cuda" else "tiny-llama-bench")
    from core.backbones import load_tokenizer

    n_pairs = args.batch_size * (args.warmup + args.steps)
    pairs = make_pairs(load_tokenizer(preset), n_pairs, args.prompt_len, args.response_len,
                       args.shared_response_frac)
    cfg = dict(
        device=device, preset=preset, dtype="bfloat16" if device == "cuda" else None,
        attention="flex_attention" if args.flex else "sdpa", threads=args.threads, steps=args.steps,
        warmup=args.warmup, batch_size=args.batch_size, prompt_len=args.prompt_len,
        response_len=args.response_len, pairs=pairs,
    )
    shared = min(round(args.shared_response_frac * args.response_len), args.response_len - 1)
    per_step = args.batch_size * (2 * args.prompt_len + 2 * args.response_len)
    print(f"device={device} preset={preset} dtype={cfg['dtype'] or 'float32'} attention(ours)={cfg['attention']} "
          f"batch={args.batch_size} prompt={args.prompt_len} response={args.response_len} "
          f"shared_response={shared} steps={args.steps} warmup={args.warmup} tokens/step={per_step}", flush=True)

    sides = ["packed", "trl"] + (["unpacked"] if args.unpacked else [])
    busy0, steal0 = _machine_cpu_seconds()
    own0, wall0 = _own_cpu_seconds(), time.perf_counter()
    results = run_sides(sides, cfg, interleave=not args.sequential)
    busy1, steal1 = _machine_cpu_seconds()
    wall = time.perf_counter() - wall0
    others = max(0.0, (busy1 - busy0) - (_own_cpu_seconds() - own0)) / wall
    stolen = (steal1 - steal0) / wall

    def tps(r: dict[str, Any], mean: bool = False) -> float:
        """tokens/s from the median step time (robust to bursts of outside load), or from the mean."""
        return r["tokens"] / r["seconds"] if mean else per_step / r["median_step"]

    trl = results["trl"]
    if "seen_tokens" in trl:
        seen = f"{trl['seen_tokens']} tokens ({trl['seen_completion']} completion) in rows {trl['rows']}"
        want = f"{per_step} tokens ({2 * args.batch_size * args.response_len} completion)"
        print(f"TRL's first batch: {seen}; expected {want}")
        if trl["seen_tokens"] != per_step or trl["seen_completion"] != 2 * args.batch_size * args.response_len:
            print("WARNING: TRL saw a different number of tokens than intended")

    if args.verbose:
        for side in sides:
            r = results[side]
            steps = " ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(r["step_times"], r["step_cpu"], strict=True))
            print(f"{r['name']} wall/cpu s per step: {steps}")
    print(f"outside load during the run: other programs used {others:.2f} of {os.cpu_count()} cores on average, "
          f"hypervisor steal {stolen:.2f}" + (" -- timings are skewed; rerun on a quiet machine, or try --threads 1"
                                              if others + stolen > 0.1 else ""))
    print("optimizers: " + "; ".join(f"{results[side]['name']}: {results[side]['optim']}" for side in sides))
    mem_label = "peak GPU GiB" if device == "cuda" else "peak RSS GiB"
    header = (f"{'side':<17}{'rows x len':>11}{'thr':>4}{'s/step':>8}{'median':>8}{'cpu s':>7}{'tokens/s':>10}"
              f"{'(mean)':>8}{mem_label:>14}{'delta GiB':>11}{'loss@0':>8}{'logps/ch@0':>12}{'logps/rej@0':>13}")
    print()
    print(header)
    print("-" * len(header))
    for side in sides:
        r = results[side]
        rows = "x".join(str(x) for x in r["rows"])
        delta = "n/a" if math.isnan(r["mem_delta"]) else f"{r['mem_delta']:.2f}"
        print(f"{r['name']:<17}{rows:>11}{r['threads']:>4}{r['seconds'] / args.steps:>8.3f}{r['median_step']:>8.3f}"
              f"{r['cpu_step']:>7.2f}{tps(r):>10.0f}{tps(r, mean=True):>8.0f}{r['peak_mem']:>14.2f}{delta:>11}"
              f"{r['loss']:>8.4f}{r['logps_chosen']:>12.3f}{r['logps_rejected']:>13.3f}")
    print()

    ours = results["packed"]
    if "unpacked" in results:
        u = results["unpacked"]
        print(f"(info) tokens/s ratio ours unpacked/TRL: {tps(u) / tps(trl):.2f}; "
              f"ours packed/unpacked: {tps(ours) / tps(u):.2f}")
    dl = abs(ours["loss"] - trl["loss"])
    dc = abs(ours["logps_chosen"] - trl["logps_chosen"])
    dr = abs(ours["logps_rejected"] - trl["logps_rejected"])
    tol = 1e-3 * max(1.0, abs(trl["logps_chosen"])) if device == "cpu" else 5e-2 * max(1.0, abs(trl["logps_chosen"]))
    same = dl < (1e-4 if device == "cpu" else 1e-2) and dc < tol and dr < tol
    print(f"first-step agreement: |loss diff|={dl:.2e} (ln 2 = {math.log(2):.4f}), |logps/chosen diff|={dc:.2e}, "
          f"|logps/rejected diff|={dr:.2e} -> {'equal' if same else 'MISMATCH'}")
    if device == "cpu":
        print(f"peak RSS delta ratio (ours/TRL): {ours['mem_delta'] / trl['mem_delta']:.2f}")
    print(f"peak memory ratio (ours/TRL): {ours['peak_mem'] / trl['peak_mem']:.2f}")
    print(f"(info) tokens/s ratio from mean step times (ours/TRL): {tps(ours, mean=True) / tps(trl, mean=True):.2f}")
    print(f"tokens/s ratio (ours/TRL): {tps(ours) / tps(trl):.2f}")


if __name__ == "__main__":
    main()
