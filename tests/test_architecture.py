"""Architecture rules of docs/architecture.md, checked on the source with ``ast`` (no imports of the code needed).

- Layers: a module may import only modules of its own layer or a lower one (every ``import``, including those inside
  functions, and ``importlib.import_module("clips_nnunet...")`` with a constant name).
- Only ``clips_nnunet.cli`` imports ``clips_nnunet.cli``.
- ``import clips_nnunet.curriculum`` (and each of its modules) loads neither torch, nnunetv2 nor SimpleITK.
- No module under ``clips_nnunet/`` is longer than 600 lines.
"""
from __future__ import annotations

import ast
import re
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clips_nnunet"

#: Layer of each top-level part of the package (docs/architecture.md). Lower layers never import higher ones.
LAYERS: Dict[str, int] = {
    "clips_nnunet": 0,  # the package __init__ (version only)
    "clips_nnunet.errors": 0, "clips_nnunet.io_utils": 0,
    "clips_nnunet.curriculum": 1, "clips_nnunet.metrics": 1, "clips_nnunet.nnunet_env": 1,
    "clips_nnunet.trainers": 2, "clips_nnunet.dataset_conversion": 2,
    "clips_nnunet.tmtv": 3, "clips_nnunet.synthetic": 3,
    "clips_nnunet.prediction": 4, "clips_nnunet.evaluation": 4,
    "clips_nnunet.audit": 5, "clips_nnunet.study": 5, "clips_nnunet.demo": 5,
    "clips_nnunet.cli": 6, "clips_nnunet.nnunet_ext": 6, "clips_nnunet.__main__": 6,
}
#: Who may import clips_nnunet.cli: the CLI itself and ``python -m clips_nnunet``.
CLI_IMPORTERS = ("clips_nnunet.cli", "clips_nnunet.__main__")
MAX_LINES = 600
HEAVY = ("torch", "nnunetv2", "SimpleITK")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> Optional[Tuple[str, int]]:
    """``(part, layer)`` of the longest :data:`LAYERS` key that ``module`` is or lies under."""
    best = None
    for part, layer in LAYERS.items():
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best[0])):
            best = (part, layer)
    return best


def imported_modules(path: Path) -> Iterator[Tuple[int, str]]:
    """``(line, module)`` of every clips_nnunet import in ``path``, at any depth, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from clips_nnunet import cli`` imports the subpackage
                yield node.lineno, f"{target}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def source_files() -> List[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _is_package_module(name: str) -> bool:
    """True when ``name`` is a module or package of clips_nnunet (not an attribute such as a class)."""
    rel = Path(*name.split("."))
    return (ROOT / rel.with_suffix(".py")).is_file() or (ROOT / rel / "__init__.py").is_file()


def test_layer_table_knows_every_module():
    unknown = [module_name(p) for p in source_files() if layer_of(module_name(p)) is None]
    assert not unknown, f"modules outside the layer table (add them to LAYERS and docs/architecture.md): {unknown}"


def test_imports_point_down_and_only_cli_imports_cli():
    problems = []
    for path in source_files():
        me = module_name(path)
        my_part, my_layer = layer_of(me)
        for line, target in imported_modules(path):
            if not (target == "clips_nnunet" or target.startswith("clips_nnunet.")):
                continue
            if not _is_package_module(target):
                continue  # ``from clips_nnunet.x import SomeClass``: the module itself is checked separately
            found = layer_of(target)
            if found is None:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which is not in the layer table")
                continue
            part, layer = found
            where = f"{path.relative_to(ROOT)}:{line}"
            if part == "clips_nnunet.cli" and my_part not in CLI_IMPORTERS:
                problems.append(f"{where}: {me} imports {target}; only the CLI imports clips_nnunet.cli (move what "
                                f"it needs out of cli/ into its layer)")
            elif layer > my_layer:
                problems.append(f"{where}: {my_part} (layer {my_layer}) imports {target} ({part}, layer {layer}); "
                                f"a lower layer may not import a higher one: move the shared code down")
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_import_walker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The walker itself: an import inside a function and a relative import are found and resolved."""
    pkg = tmp_path / "clips_nnunet" / "curriculum"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    mod = pkg / "x.py"
    mod.write_text("def f():\n    from clips_nnunet.evaluation import metrics\n"
                   "from ..trainers import base\nimport importlib\nimportlib.import_module('clips_nnunet.cli')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = sorted(imported_modules(mod))
    assert (2, "clips_nnunet.evaluation") in found and (2, "clips_nnunet.evaluation.metrics") in found
    assert (3, "clips_nnunet.trainers.base") in found
    assert (5, "clips_nnunet.cli") in found


@pytest.mark.parametrize("target", ["clips_nnunet.curriculum", "every submodule"])
def test_curriculum_imports_no_torch_nnunet_or_simpleitk(target):
    """In a fresh interpreter: the curriculum package (plain numpy/scipy) loads none of the heavy libraries."""
    if target == "clips_nnunet.curriculum":
        code = "import clips_nnunet.curriculum"
    else:
        code = ("import importlib, pkgutil, clips_nnunet.curriculum as c\n"
                "for m in pkgutil.walk_packages(c.__path__, 'clips_nnunet.curriculum.'):\n"
                "    importlib.import_module(m.name)")
    code += ("\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{list(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {target} loaded {loaded[:10]}"


def test_no_module_longer_than_600_lines():
    """About 600 lines at most per module (RULES.md). study.py (being split into clips_nnunet/study/) fails here
    until that split lands."""
    long = {str(p.relative_to(ROOT)): n for p in source_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


NNUNET_ENV_READ = re.compile(r"""(environ(\.get)?\s*[\[(]\s*|getenv\(\s*)["']nnUNet_(raw|preprocessed|results)["']""")


def test_only_nnunet_env_reads_nnunet_folders_from_the_environment():
    """nnU-Net's folders have one owner (clips_nnunet/nnunet_env.py): nowhere else is ``os.environ["nnUNet_raw"]``,
    ``os.environ.get("nnUNet_results")`` or ``os.getenv("nnUNet_preprocessed")`` read, so a missing variable
    fails the same way everywhere."""
    owner = PACKAGE / "nnunet_env.py"
    readers = [f"{p.relative_to(ROOT)}:{n}" for p in source_files() if p != owner
               for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if NNUNET_ENV_READ.search(line)]
    assert not readers, f"read nnU-Net's folders through clips_nnunet.nnunet_env instead: {readers}"
    assert NNUNET_ENV_READ.search('raw = os.environ.get("nnUNet_raw")')  # the pattern itself finds a reader
    assert NNUNET_ENV_READ.search("os.environ['nnUNet_results']") and NNUNET_ENV_READ.search('getenv("nnUNet_raw")')
