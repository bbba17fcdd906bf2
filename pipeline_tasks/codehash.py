"""Which project files a piece of code runs, and a digest of them.

A cache or checkpoint must change when the code that computed it changes (a bug fix in the
augmentation must retrain the encoder). The files are found statically: the import closure of
entry modules within the project's packages, lazy imports included. Standard library only, so
the CLI can use it before anything heavy is imported.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@cache
def module_files(packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file for every module of ``packages`` (folders under the project root)."""
    found = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, files: dict[str, Path]) -> set[str]:
    """Modules of ``files`` that ``module`` imports anywhere in its file (lazy imports too)."""
    found = set()
    top = {name.split(".")[0] for name in files}
    for node in ast.walk(ast.parse(files[module].read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name.split(".")[0] in top and name not in files and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in files and name != module:
                found.add(name)
    return found


def closure(roots: Iterable[str], packages: tuple[str, ...] = ("pipeline_tasks",),
            not_followed: frozenset[str] = frozenset(), excluded: frozenset[str] = frozenset()) -> list[str]:
    """Files (relative to the project root, sorted) of ``roots`` and every module they import,
    transitively; ``not_followed`` modules count but their imports do not, ``excluded`` ones
    do not count at all. Package ``__init__`` files (docstrings only) are left out."""
    files = module_files(packages)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module in excluded:
            continue
        seen.add(module)
        if module not in not_followed:
            todo += imports(module, files)
    return sorted(str(files[m].relative_to(REPO)) for m in seen if files[m].name != "__init__.py")


def digest(files: Iterable[str]) -> str:
    """sha256 over the files' paths and bytes (paths relative to the project root)."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return h.hexdigest()


def code_digest(*roots: str) -> str:
    """The digest of ``roots``' import closure within ``pipeline_tasks``."""
    return digest(closure(roots))
