"""The house plan holds: the import contract passes, breaks when a layer imports upward, and old paths still load."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from core import legacy

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "datamodules", "lightning_modules", "callbacks", "pipelines")
LINT = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contract_holds() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for name in ("Layers", "Systems are independent", "No import cycle", "Callbacks see the modules"):
        assert name in done.stdout  # every contract is still there and KEPT
    assert "BROKEN" not in done.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's packages and contract, copied, so a test can add a forbidden import without touching the repo."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("probe", "source", "contract"),
    [
        ("datamodules/_probe.py", "import lightning_modules.dpo\n", "Layers"),
        ("core/_probe.py", "from datamodules.loaders import SplitLoaders\n", "Layers"),
        ("lightning_modules/_probe.py", "import pipelines.nrg\n", "Layers"),
        ("callbacks/_probe.py", "import pipelines.instruction_following.callback\n", "Layers"),
        ("callbacks/_probe.py", "from datamodules.loaders import SplitLoaders\n", "Callbacks see the modules"),
        ("lightning_modules/msd/_probe.py", "from lightning_modules.dpo.loss import dpo_loss\n", "Systems"),
        ("core/_probe.py", "import core.errors\n", None),  # allowed: the contract is not simply failing everything
    ],
)
def test_a_forbidden_import_breaks_the_contract(tree_copy: Path, probe: str, source: str, contract: str | None) -> None:
    path = tree_copy / probe
    path.write_text(source)
    try:
        done = lint(tree_copy)
    finally:
        path.unlink()
    if contract is None:
        assert done.returncode == 0, done.stdout[-3000:]
        return
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[1]
    assert contract in broken and probe[:-3].replace("/", ".") in broken


def test_an_import_cycle_breaks_the_contract(tree_copy: Path) -> None:
    a, b = tree_copy / "core" / "_cycle_a.py", tree_copy / "core" / "_cycle_b.py"
    a.write_text("import core._cycle_b\n")
    b.write_text("import core._cycle_a\n")
    try:
        done = lint(tree_copy)
    finally:
        a.unlink()
        b.unlink()
    assert done.returncode != 0
    assert "No import cycle" in done.stdout.split("Broken contracts", 1)[1]


def _fresh_import(name: str) -> tuple[object, list[warnings.WarningMessage]]:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("old", sorted(legacy.MOVED))
def test_every_old_module_path_is_an_alias_that_warns(old: str) -> None:
    module, caught = _fresh_import(old)
    new = importlib.import_module(legacy.MOVED[old])
    assert any(f"{old} moved to {legacy.MOVED[old]}" in str(w.message) for w in caught)
    public = getattr(new, "__all__", None) or [
        n for n in vars(new) if not n.startswith("_") and getattr(getattr(new, n), "__module__", "") == new.__name__]
    assert public, f"{new.__name__} defines nothing"
    for name in public:
        assert getattr(module, name) is getattr(new, name)


def test_split_names_and_old_package_attributes_resolve() -> None:
    from core.errors import ConfigError
    from core.packing import collate_pairs
    from lightning_modules.dpo.sft import SFT
    from pipelines.instruction_following.callback import IFEvalCallback
    from pipelines.rewardbench import read_rewardbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert importlib.import_module("datamodules.io").ConfigError is ConfigError
        assert importlib.import_module("lightning_modules.packing").collate_pairs is collate_pairs
        assert importlib.import_module("lightning_modules.rewardbench").read_rewardbench is read_rewardbench
        assert importlib.import_module("datamodules.instruction_following.curate").__name__.endswith("curate")
        import callbacks

        assert callbacks.IFEvalCallback is IFEvalCallback
        from jsonargparse._util import import_object

        assert import_object("lightning_modules.sft.SFT") is SFT  # how LightningCLI reads a checkpoint's _class_path
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = importlib.import_module("lightning_modules.sft").nothing_here
