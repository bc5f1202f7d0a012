"""Cache fixed text representations under registered task prefixes (Huang et al., Findings of EMNLP 2023).

    lm-suite prefix extract --registry prefixes/ --backbone tiny-bert --prefixes all \\
        --input data/train.jsonl --text-field text --label-field label --out cache/train.safetensors

Output (the contract the downstream-heads datamodule reads):

- ``.safetensors``: tensor ``embeddings`` (N, D) float32 and, with ``--label-field``, ``labels`` (N,) int64 when
  every label is an integer (or bool), float32 otherwise. String metadata: ``format`` (``prefix-embeddings/1``),
  ``fingerprint``, ``prefixes`` (JSON list of names, column-block order for ``concat``), ``pooling``, ``combine``,
  ``backbone``, ``encoder_fingerprint``, ``input``, ``text_field``, ``text_pair_field``, ``label_field``, ``count``,
  ``dim``.
- ``.parquet``: column ``embedding`` (list<float32>) and, with labels, ``label`` (int64 / float32); the same
  metadata as Arrow schema metadata.

``D`` is ``k * hidden`` for ``--combine concat`` (prefix i in columns ``i*hidden:(i+1)*hidden``), ``hidden`` for
``mean`` and for ``--prefixes none`` (the frozen encoder alone, the no-prefix baseline). If ``--out`` exists with the
same fingerprint (inputs, fields, prefixes' tensors, encoder weights, pooling, combine, max length) it is reused.
A run holds an exclusive lock on ``--out`` (:func:`core.locks.output_lock`): a second run into the same file stops at
once with an error naming the first.
Bad input prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.backbones import PRESETS, UnknownModelError, build_encoder, load_tokenizer, model_fingerprint
from core.errors import ConfigError, DataError
from core.io import atomic_path
from core.locks import output_lock
from core.records import Record, read_file, read_hf_dataset
from lightning_modules.prefix.networks import Prefix, Text, extract
from lightning_modules.prefix.registry import PrefixInfo, list_prefixes, load_prefix, read_info

FORMAT = "prefix-embeddings/1"
USER_ERRORS = (DataError, ConfigError, UnknownModelError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lm-suite prefix extract", description=__doc__.split("\n")[0])
    p.add_argument("--registry", help="prefix registry folder (not needed with --prefixes none)")
    p.add_argument("--backbone", required=True, help="encoder name, as for build_encoder (tiny-bert, hf:<folder>)")
    p.add_argument("--prefixes", nargs="+", default=["all"],
                   help="prefix names, 'all' (default: every prefix in the registry) or 'none' (frozen encoder alone)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a .jsonl / .json / .parquet file")
    src.add_argument("--hf-dataset", help="a Hugging Face dataset (save_to_disk folder or hub name)")
    p.add_argument("--split", default="train", help="split of --hf-dataset")
    p.add_argument("--text-field", default="text")
    p.add_argument("--text-pair-field", default=None)
    p.add_argument("--label-field", default=None)
    p.add_argument("--out", required=True, help="output .safetensors or .parquet")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None,
                   help="default: the pooling the prefixes were trained with (mean without prefixes)")
    p.add_argument("--combine", choices=["concat", "mean"], default="concat")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="cut texts to this many tokens (default: positions)")
    p.add_argument("--seed", type=int, default=None,
                   help="init seed of a random-init preset encoder (default: the one recorded with the prefixes, or 0)")
    p.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--force", action="store_true", help="recompute even if --out has the same fingerprint")
    return p.parse_args(argv)


def read_inputs(
    records: list[Record], text_field: str, pair_field: str | None, label_field: str | None
) -> tuple[list[Text], Tensor | None]:
    """Texts (or pairs) and labels; a :class:`DataError` naming ``file:line`` for a missing or mistyped field."""
    texts: list[Text] = []
    labels: list[Any] = []
    for row, where in records:
        fields = [text_field] + ([pair_field] if pair_field else [])
        values = []
        for name in fields:
            if name not in row or row[name] is None:
                raise DataError(f"{where}: missing text field {name!r}")
            if not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}")
            values.append(row[name])
        texts.append((values[0], values[1]) if pair_field else values[0])
        if label_field:
            label = row.get(label_field)
            if isinstance(label, bool):
                label = int(label)
            if not isinstance(label, (int, float)):
                raise DataError(f"{where}: label field {label_field!r} must be a number, got {label!r}")
            labels.append(label)
    if not texts:
        raise DataError("no input records")
    if not label_field:
        return texts, None
    integer = all(isinstance(x, int) for x in labels)
    return texts, torch.tensor(labels, dtype=torch.int64 if integer else torch.float32)


def load_records(args: argparse.Namespace) -> list[Record]:
    if args.input:
        return list(read_file(args.input))
    try:
        return list(read_hf_dataset(args.hf_dataset, args.split))
    except DataError:
        raise
    except Exception as e:  # not found, offline, no such split: one clear line
        raise DataError(f"cannot load dataset {args.hf_dataset!r} split {args.split!r}: {e}") from e


def resolve_prefixes(args: argparse.Namespace) -> list[PrefixInfo]:
    names = args.prefixes
    if names == ["none"]:
        return []
    if args.registry is None:
        raise ConfigError("--registry is required unless --prefixes none")
    if names == ["all"]:
        infos = list_prefixes(args.registry)
        if not infos:
            raise ConfigError(f"registry {args.registry} holds no prefixes")
        return infos
    if "all" in names or "none" in names:
        raise ConfigError("'all' and 'none' cannot be mixed with prefix names")
    return [read_info(args.registry, n) for n in names]


def encoder_seed(args: argparse.Namespace, infos: list[PrefixInfo]) -> int | None:
    if args.backbone not in PRESETS:
        return None
    if args.seed is not None:
        return args.seed
    seeds = {i.encoder_seed for i in infos if i.encoder_seed is not None}
    if len(seeds) > 1:
        raise ConfigError(f"the prefixes were trained on preset encoders with different seeds {sorted(seeds)}")
    return seeds.pop() if seeds else 0


def fingerprint(texts: list[Text], labels: Tensor | None, prefixes: list[Prefix], settings: dict[str, Any]) -> str:
    """sha256 over the inputs, the prefixes' tensors and the settings that change the embeddings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(texts, ensure_ascii=False).encode())
    if labels is not None:
        h.update(str(labels.dtype).encode() + labels.numpy().tobytes())
    for p in prefixes:
        h.update(p.name.encode())
        for t in (p.keys, p.values):
            h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint in an existing output file's metadata (None if unreadable)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            value = meta.get(b"fingerprint")
            return value.decode() if value else None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:  # a foreign or damaged file: recompute and replace it
        return None


def write_output(path: Path, embeddings: Tensor, labels: Tensor | None, metadata: dict[str, str]) -> None:
    """Atomic write of the contract format (module docstring)."""
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = {"embedding": pa.array(list(embeddings.numpy()), type=pa.list_(pa.float32()))}
            if labels is not None:
                columns["label"] = pa.array(labels.numpy())
            table = pa.table(columns).replace_schema_metadata(metadata)
            pq.write_table(table, tmp)
        else:
            from safetensors.torch import save_file

            tensors = {"embeddings": embeddings.float().contiguous()}
            if labels is not None:
                tensors["labels"] = labels.contiguous()
            save_file(tensors, str(tmp), metadata=metadata)


def run(args: argparse.Namespace) -> str:
    """Extract and write; returns the line to print."""
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".parquet"):
        raise ConfigError(f"--out must end in .safetensors or .parquet, got {out.name!r}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    with output_lock(out):  # before any reading: a second run into the same file stops at once
        return _extract(args, out)


def _extract(args: argparse.Namespace, out: Path) -> str:
    """:func:`run`'s work, under the lock on ``--out``."""
    texts, labels = read_inputs(load_records(args), args.text_field, args.text_pair_field, args.label_field)
    infos = resolve_prefixes(args)
    trained = sorted({i.pooling for i in infos})
    if args.pooling is None:
        if len(trained) > 1:
            raise ConfigError(f"the prefixes were trained with different poolings {trained}: choose one with --pooling")
        args.pooling = trained[0] if trained else "mean"
    elif trained and trained != [args.pooling]:
        raise ConfigError(f"--pooling {args.pooling} differs from the pooling the prefixes were trained with {trained}")
    if len({i.name for i in infos}) != len(infos):
        raise ConfigError(f"--prefixes names a prefix twice: {[i.name for i in infos]}")
    encoder = build_encoder(args.backbone, seed=encoder_seed(args, infos))
    tokenizer = load_tokenizer(args.backbone)
    encoder_fp = model_fingerprint(encoder, args.backbone)
    prefixes = [load_prefix(args.registry, i.name, encoder=encoder, backbone=args.backbone,
                            encoder_fingerprint=encoder_fp)[0] for i in infos]
    settings = dict(format=FORMAT, backbone=args.backbone, encoder=encoder_fp, pooling=args.pooling,
                    combine=args.combine, max_length=args.max_length, text_field=args.text_field,
                    text_pair_field=args.text_pair_field, label_field=args.label_field)
    fp = fingerprint(texts, labels, prefixes, settings)
    if out.exists() and not args.force and stored_fingerprint(out) == fp:
        return f"reusing {out}: same inputs and prefixes (fingerprint {fp})"
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r}: {e}") from None
    embeddings = extract(encoder.to(device), tokenizer, texts, prefixes, pooling=args.pooling, combine=args.combine,
                         batch_size=args.batch_size, max_length=args.max_length)  # (N, D)
    metadata = dict(
        format=FORMAT, fingerprint=fp, prefixes=json.dumps([p.name for p in prefixes]), pooling=args.pooling,
        combine=args.combine, backbone=args.backbone, encoder_fingerprint=encoder_fp,
        input=str(args.input) if args.input else f"{args.hf_dataset}[{args.split}]", text_field=args.text_field,
        text_pair_field=args.text_pair_field or "", label_field=args.label_field or "",
        count=str(embeddings.shape[0]), dim=str(embeddings.shape[1]),
    )
    write_output(out, embeddings, labels, metadata)
    names = ", ".join(p.name for p in prefixes) or "none"
    return f"wrote {out}: {embeddings.shape[0]} embeddings of dim {embeddings.shape[1]} (prefixes: {names})"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    try:
        print(run(args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
