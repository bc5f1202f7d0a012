"""Module paths from before the house plan (one flat ``lightning_modules/``), kept importable for one release.

Configs and checkpoints name classes by import path (LightningCLI stores ``_class_path`` in a checkpoint's
hyperparameters, e.g. ``lightning_modules.sft.SFT``). Those modules moved; :func:`install` puts a finder on
``sys.meta_path`` that answers each old path with a thin alias module whose attributes are the moved objects
themselves (``lightning_modules.sft.SFT is lightning_modules.dpo.sft.SFT``), and warns once per old path with the
new one. Old packages alias their submodules by prefix (``datamodules.instruction_following.curate`` ->
``pipelines.instruction_following.curate``). The table holds strings only, so ``core`` imports no other layer.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

REMOVED_IN = "0.2"

# old module -> its new home (a prefix entry also covers the old package's submodules)
MOVED: dict[str, str] = {
    "callbacks.ifeval": "pipelines.instruction_following.callback",
    "datamodules.chat": "core.chat",
    "datamodules.critiques": "pipelines.critiques",
    "datamodules.instruction_following": "pipelines.instruction_following",
    "datamodules.instruction_following.generation": "core.generation",
    "datamodules.io": "core.io",
    "datamodules.records": "core.records",
    "datamodules.resumable": "pipelines.resumable",
    "lightning_modules.backbones": "core.backbones",
    "lightning_modules.bilevel": "lightning_modules.msd.bilevel",
    "lightning_modules.checkpointing": "core.checkpointing",
    "lightning_modules.critic_rm_score": "pipelines.score_rewards",
    "lightning_modules.export": "core.export",
    "lightning_modules.heads": "lightning_modules.prefix.heads",
    "lightning_modules.losses": "core.losses",
    "lightning_modules.losses.distill": "core.losses",
    "lightning_modules.losses.dpo": "lightning_modules.dpo.loss",
    "lightning_modules.losses.logprobs": "core.losses",
    "lightning_modules.losses.msd": "lightning_modules.msd.loss",
    "lightning_modules.losses.rationale": "lightning_modules.unirex.loss",
    "lightning_modules.losses.reward": "lightning_modules.critic_rm.loss",
    "lightning_modules.losses.sft": "core.losses",
    "lightning_modules.modality": "lightning_modules.msd.modality",
    "lightning_modules.multimodal": "lightning_modules.msd.classifier",
    "lightning_modules.multitask": "lightning_modules.prefix.multitask",
    "lightning_modules.nrg": "pipelines.nrg",
    "lightning_modules.optim": "core.optim",
    "lightning_modules.packing": "lightning_modules.dpo.packing",
    "lightning_modules.prefix_extract": "pipelines.prefix_extract",
    "lightning_modules.prefix_registry": "lightning_modules.prefix.registry",
    "lightning_modules.prefix_report": "pipelines.prefix_report",
    "lightning_modules.prefix_tuning": "lightning_modules.prefix.module",
    "lightning_modules.rationale": "lightning_modules.unirex.networks",
    "lightning_modules.rationale_metrics": "lightning_modules.unirex.metrics",
    "lightning_modules.reference": "lightning_modules.dpo.reference",
    "lightning_modules.rewardbench": "lightning_modules.critic_rm.metrics",
    "lightning_modules.sft": "lightning_modules.dpo.sft",
    "lightning_modules.shard_cache": "core.shard_cache",
    "lightning_modules.strategies": "core.strategies",
    "lightning_modules.teacher_cache": "lightning_modules.msd.teacher",
}
PACKAGES = {"datamodules.critiques", "datamodules.instruction_following", "lightning_modules.losses"}

# names that left their old module for another home than the module's own new home
SPLIT: dict[str, dict[str, str]] = {
    "datamodules.instruction_following": {"MissingExtraError": "core.errors"},
    "datamodules.instruction_following.constraints": {"MissingExtraError": "core.errors"},
    "datamodules.io": {"ConfigError": "core.errors", "DataError": "core.errors"},
    "lightning_modules.export": {"main": "pipelines.export"},
    "lightning_modules.heads": {"TaskType": "core.heads", "build_head": "core.heads", "eval_metrics": "core.heads"},
    "lightning_modules.losses": {"dpo_loss": "lightning_modules.dpo.loss"},
    "lightning_modules.packing": {"TokenizedPair": "core.packing", "collate_pairs": "core.packing",
                                  "common_prefix_len": "core.packing", "PAD": "core.packing",
                                  "SHARED": "core.packing", "CHOSEN": "core.packing", "REJECTED": "core.packing"},
    "lightning_modules.rewardbench": {n: "pipelines.rewardbench" for n in (
        "RewardBenchPair", "ScoredPair", "read_rewardbench", "read_scored", "evaluate_scored", "format_table",
        "tiny_rewardbench_rows", "write_tiny_rewardbench", "main", "TINY_SUBSETS", "TINY_CODE_EVERY")},
    "lightning_modules.teacher_cache": {"main": "pipelines.teacher_cache"},
}
# attributes of packages that stay, whose objects moved out of them: package -> {name: module}
PACKAGE_ATTRS: dict[str, dict[str, str]] = {
    "callbacks": {"IFEvalCallback": "pipelines.instruction_following.callback"},
}


def new_home(old: str) -> str | None:
    """The module that replaced ``old``, or None if ``old`` did not move."""
    if old in MOVED:
        return MOVED[old]
    for package in PACKAGES:
        if old.startswith(package + "."):
            return MOVED[package] + old[len(package):]
    return None


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path is an alias that goes away in lm-suite {REMOVED_IN}",
                  FutureWarning, stacklevel=3)


class _Alias(types.ModuleType):
    """The old module: every attribute is read from where it lives now."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        home = SPLIT.get(self.__name__, {}).get(name, self.__dict__["_new_home"])
        try:
            return getattr(importlib.import_module(home), name)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} (now {home!r}) has no attribute {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted(set(dir(importlib.import_module(self.__dict__["_new_home"]))) | set(SPLIT.get(self.__name__, {})))


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if new_home(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = new_home(spec.name)
        importlib.import_module(new)  # fails here, with the real error, if the new home does not import
        _warn(spec.name, new)
        module = _Alias(spec.name)
        module.__dict__["_new_home"] = new
        if spec.name in PACKAGES:
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def package_attr(package: str, name: str) -> Any:
    """A moved attribute of a package that stays (for the package's module ``__getattr__``), warning once."""
    home = PACKAGE_ATTRS.get(package, {}).get(name)
    if home is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    _warn(f"{package}.{name}", f"{home}.{name}")
    value = getattr(importlib.import_module(home), name)
    setattr(sys.modules[package], name, value)  # once: later reads find it without a warning
    return value


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
