"""A folder of trained task prefixes (Huang et al. 2023: one prefix per source task, added or replaced on its own).

Layout: ``<registry>/<name>/prefix.json`` (metadata, :class:`PrefixInfo`) and ``<registry>/<name>/prefix.safetensors``
(``keys`` and ``values``, each (layers, heads, P, head_dim) float32: the materialised prefix, so loading needs no
MLP). Each prefix folder is written atomically. ``encoder_fingerprint`` is
:func:`~core.backbones.model_fingerprint` (sha256 over the backbone name and every weight), so a prefix is
never applied to other weights under the same name (e.g. a tiny preset built with another seed).
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import ConfigError, DataError
from core.io import atomic_path
from lightning_modules.prefix.networks import Prefix, PrefixShape

INFO_FILE = "prefix.json"
TENSORS_FILE = "prefix.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class PrefixInfo:
    """Metadata of one registered prefix (the contents of ``prefix.json``)."""

    name: str
    task: str
    backbone: str
    encoder_fingerprint: str
    length: int
    layers: int
    heads: int
    head_dim: int
    hidden_size: int
    pooling: str
    reparameterized: bool = True
    encoder_seed: int | None = None  # init seed of a random-init preset encoder; None for pretrained weights
    created: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> PrefixShape:
        return PrefixShape(layers=self.layers, heads=self.heads, head_dim=self.head_dim)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> PrefixInfo:
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"bad prefix name {name!r}: use letters, digits, '_', '-', '.' (no path separators)")
    return name


def save_prefix(
    registry: str | Path,
    name: str,
    prefix: Prefix,
    *,
    task: str,
    backbone: str,
    encoder_fingerprint: str,
    pooling: str,
    reparameterized: bool = True,
    encoder_seed: int | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``prefix`` as ``<registry>/<name>/`` (replacing an older one atomically); returns the folder."""
    check_name(name)
    shape = prefix.shape
    info = PrefixInfo(
        name=name, task=task, backbone=backbone, encoder_fingerprint=encoder_fingerprint, length=prefix.length,
        layers=shape.layers, heads=shape.heads, head_dim=shape.head_dim, hidden_size=shape.hidden, pooling=pooling,
        reparameterized=reparameterized, encoder_seed=encoder_seed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        metrics={k: float(v) for k, v in (metrics or {}).items()},
    )
    folder = Path(registry) / name
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        tensors = {"keys": prefix.keys.detach().float().cpu().contiguous(),
                   "values": prefix.values.detach().float().cpu().contiguous()}
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"name": name, "backbone": backbone})
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return folder


def read_info(registry: str | Path, name: str) -> PrefixInfo:
    path = Path(registry) / check_name(name) / INFO_FILE
    if not path.exists():
        known = ", ".join(i.name for i in list_prefixes(registry)) or "none"
        raise ConfigError(f"unknown prefix {name!r} in registry {registry} (known: {known})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    return PrefixInfo.from_json(data, str(path))


def list_prefixes(registry: str | Path) -> list[PrefixInfo]:
    """Every prefix in ``registry``, sorted by name (an absent folder is an empty registry)."""
    root = Path(registry)
    if not root.is_dir():
        return []
    return [read_info(root, d.name) for d in sorted(root.iterdir()) if d.is_dir() and (d / INFO_FILE).exists()]


def check_compatible(
    info: PrefixInfo, encoder: nn.Module, backbone: str, encoder_fingerprint: str | None = None
) -> None:
    """A :class:`ConfigError` unless the prefix was trained on this encoder: same backbone name, same layers / heads /
    head_dim and, when given, the same weights fingerprint."""
    if info.backbone != backbone:
        raise ConfigError(f"prefix {info.name!r} was trained on backbone {info.backbone!r}, not {backbone!r}")
    have = PrefixShape.of(encoder)
    if have != info.shape:
        raise ConfigError(
            f"prefix {info.name!r} needs {info.layers} layers, {info.heads} heads of size {info.head_dim}; encoder "
            f"{backbone!r} has {have.layers} layers, {have.heads} heads of size {have.head_dim}"
        )
    if encoder_fingerprint is not None and encoder_fingerprint != info.encoder_fingerprint:
        raise ConfigError(
            f"prefix {info.name!r} was trained on other weights of {backbone!r} (fingerprint "
            f"{info.encoder_fingerprint}, this encoder {encoder_fingerprint}); for a random-init preset pass the seed "
            f"it was built with ({info.encoder_seed})"
        )


def load_prefix(
    registry: str | Path,
    name: str,
    *,
    encoder: nn.Module | None = None,
    backbone: str | None = None,
    encoder_fingerprint: str | None = None,
) -> tuple[Prefix, PrefixInfo]:
    """Read ``<registry>/<name>/``; with ``encoder`` and ``backbone``, also :func:`check_compatible`."""
    info = read_info(registry, name)
    path = Path(registry) / name / TENSORS_FILE
    if not path.exists():
        raise DataError(f"{path}: no such file (incomplete prefix folder)")
    tensors = load_file(str(path))
    if set(tensors) != {"keys", "values"}:
        raise DataError(f"{path}: expected tensors 'keys' and 'values', found {sorted(tensors)}")
    prefix = Prefix(tensors["keys"], tensors["values"], name=name)
    if prefix.shape != info.shape or prefix.length != info.length:
        raise DataError(f"{path}: tensors of shape {tuple(prefix.keys.shape)} disagree with {INFO_FILE}")
    if encoder is not None:
        check_compatible(info, encoder, backbone if backbone is not None else info.backbone, encoder_fingerprint)
    return prefix, info
