"""Batch scoring with a trained CriticRM: critiques and rewards for every response of a JSONL file.

Each row is a pair (``prompt``, ``chosen``, ``rejected``; RewardBench files too) or a single response (``prompt``,
``response``). Each response gets ``--num-critiques`` self-written critiques (Yu et al. 2025: sampling several and
averaging their rewards scales at inference time); the output repeats the row and adds, per response field F,
``F_reward`` (the mean), ``F_rewards`` (one per critique) and ``F_critiques``. For pair files it prints the pairwise
accuracy, and the RewardBench table when rows carry a ``subset``; the scored file feeds
``lm-suite rewardbench --scores``.

    lm-suite score-rewards --ckpt runs/critic_rm/lightning_logs/version_0/checkpoints/last.ckpt \\
        --input data/rewardbench_tiny.jsonl --out runs/critic_rm/scored.jsonl --num-critiques 4 --temperature 0.8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from core.chat import PairTokenizer, messages_of, text_of
from core.checkpointing import load_module, read_checkpoint
from core.errors import ConfigError, DataError
from core.io import atomic_write_text, jsonl_text
from core.records import read_records
from datamodules.reward import pad_rows, turn_ids
from lightning_modules.critic_rm.module import CriticRM

PAIR_FIELDS = ("chosen", "rejected")


def response_fields(row: dict[str, Any], where: str) -> tuple[str, ...]:
    if all(row.get(f) is not None for f in PAIR_FIELDS):
        return PAIR_FIELDS
    if row.get("response") is not None:
        return ("response",)
    raise DataError(f"{where}: expected 'chosen' and 'rejected', or 'response'")


def request_ids(model: CriticRM, pt: PairTokenizer, row: dict[str, Any], field: str, where: str) -> list[int]:
    """P + R (+ the critique request A) ids of one response, built as :class:`RewardDataModule` builds them."""
    if row.get("prompt") is None:
        raise DataError(f"{where}: missing field 'prompt'")
    prompt = messages_of(row["prompt"], "user", "prompt", where)
    response = messages_of(row[field], "assistant", field, where)
    if not text_of(prompt).strip() or not text_of(response).strip():
        raise DataError(f"{where}: empty 'prompt' or {field!r}")
    instruction = [{"role": "user", "content": model.hparams.critique_instruction}] if model.hparams.use_critiques \
        else None
    r_ids, ask = turn_ids(pt, prompt, response, instruction, where)
    return pt.prompt_ids(prompt) + r_ids + ask


def score_rows(
    model: CriticRM, rows: list[tuple[dict[str, Any], str]], batch_size: int = 8, pt: PairTokenizer | None = None
) -> list[dict[str, Any]]:
    """Every row with its responses' rewards and critiques added (see the module docstring).

    ``pt`` renders the chat as in training (the datamodule's ``use_chat_template`` and ``system_prompt``); by
    default the tokenizer's own template.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    pt = pt or PairTokenizer(model.tokenizer)
    items = [(i, f, request_ids(model, pt, row, f, where))  # validate everything before scoring anything
             for i, (row, where) in enumerate(rows) for f in response_fields(row, where)]
    out = [dict(row) for row, _ in rows]
    device = next(model.parameters()).device
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ids, mask, _ = pad_rows([c[2] for c in chunk], model.tokenizer.pad_token_id, "left")
        r, texts = model.score_requests({"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                                        seed=start)  # (n, m)
        for (i, field, _), rewards, critiques in zip(chunk, r.float().cpu().tolist(), texts, strict=True):
            out[i][f"{field}_reward"] = sum(rewards) / len(rewards)
            out[i][f"{field}_rewards"] = rewards
            out[i][f"{field}_critiques"] = critiques
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score a JSONL file with a CriticRM checkpoint.")
    parser.add_argument("--ckpt", required=True, type=Path, help="CriticRM checkpoint (lm-suite fit)")
    parser.add_argument("--input", required=True, type=Path, help="pairs or single responses (JSONL/JSON/Parquet)")
    parser.add_argument("--out", required=True, type=Path, help="scored JSONL, written atomically")
    parser.add_argument("--num-critiques", type=int, default=None, help="critiques per response (default: as trained)")
    parser.add_argument("--temperature", type=float, default=None, help="critique sampling temperature (0 = greedy)")
    parser.add_argument("--max-critique-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8, help="responses per generate call (default: 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the backbone run its own Python code (never taken from the checkpoint)")
    args = parser.parse_args(argv)
    try:
        if not args.ckpt.exists():  # a file, or a sharded run's folder
            raise DataError(f"{args.ckpt}: no such checkpoint")
        rows = read_records(str(args.input))
        overrides = {name: value for name, value in (
            ("num_critiques", args.num_critiques), ("critique_temperature", args.temperature),
            ("max_critique_tokens", args.max_critique_tokens)) if value is not None}
        model = load_module(CriticRM, args.ckpt, args.trust_remote_code, how="--trust-remote-code", **overrides)
        model = model.to(args.device).eval()  # the overrides went through __init__'s checks
        data = read_checkpoint(args.ckpt, tensors=False).get("datamodule_hyper_parameters") or {}
        pt = PairTokenizer(model.tokenizer, data.get("use_chat_template"), data.get("system_prompt"))
        with torch.no_grad():
            scored = score_rows(model, rows, args.batch_size, pt)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, jsonl_text(scored))
    pairs = [r for r in scored if "chosen_reward" in r]
    print(f"scored {len(scored)} rows ({sum(len(response_fields(r, '')) for r, _ in rows)} responses) -> {args.out}")
    if pairs:
        from pipelines.rewardbench import evaluate_scored, format_table

        result = evaluate_scored(args.out)
        print(f"pairwise accuracy {result['accuracy']:.4f} over {len(pairs)} pairs")
        if any("subset" in r for r in pairs):
            print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
