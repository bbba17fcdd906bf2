"""MkDocs hook: the parts of the site that the code and the benchmarks' output files already say.

A page asks for them with a placeholder comment on a line of its own (outside code fences):

    <!-- generated: cli -->                      `pretrainflow --help` and every subcommand's
    <!-- generated: params -->                   params.yaml, section by section, with its comments
    <!-- generated: presets -->                  the presets of `--preset` (pipeline_tasks/recipes.py)
    <!-- generated: stages -->                   the stage graph (flows/orchestration/graph.py)
    <!-- generated: stage-files -->              the files each stage's cache proof names
    <!-- generated: checks -->                   every check of the validation gate
    <!-- generated: layout -->                   the packages and modules, from their docstrings
    <!-- generated: csv PATH [COLUMN ...] -->    a CSV as a table (all columns, or those named)
    <!-- generated: text PATH -->                a text file in a code block
    <!-- generated: readme "SECTION" -->         a section of README.md (its links into docs/ rewritten)

Paths are relative to the repository root (the folder of mkdocs.yml) and must stay inside it.
A benchmark's results file that is not there yet renders as "(not run yet: `COMMAND`)" when
``BENCH_COMMANDS`` knows the bench that writes it; any other missing file, an unknown
placeholder or a malformed one raises, so the build fails loudly. Nothing here uses the
network. ``render(markdown, root)`` is the whole job; tests call it directly.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"^<!--\s*generated:\s*(?P<kind>[\w-]+)(?P<args>.*?)\s*-->\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")

# Results files by name -> the command that writes them (for "(not run yet: ...)").
BENCH_COMMANDS = {
    r"label_efficiency.*": "python bench/label_efficiency.py",
    r"label_selection.*": "python bench/label_selection.py",
    r"near_copies\.txt": "python bench/near_copies.py > bench/results/near_copies.txt",
    r"photo_scale\..*": "python bench/photo_scale.py --json bench/results/photo_scale.json",
    r"transfer.*": "python bench/transfer.py --name transfer (then --append, see the page)",
}

# The validate section's setting behind each check, by the column the check reads (None: the
# class table's row count); yes/no checks have none.
CHECK_PARAMS = {"format": "allowed_formats", "width": "min_width", "height": "min_height",
                None: "min_classes", "n_images": "min_images_per_class", "imbalance": "max_imbalance_ratio",
                "n_distinct": "min_distinct_per_class", "label": "expected_classes"}


class PlaceholderError(ValueError):
    """A placeholder the hook cannot render: unknown, malformed, or naming a missing file."""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs' page event: every placeholder of the page replaced."""
    return render(markdown, Path(config["config_file_path"]).resolve().parent, page.file.src_uri)


def render(markdown: str, root: Path, page: str = "index.md") -> str:
    """``markdown`` (the page ``page``, relative to docs/) with each placeholder line replaced by
    what it asks for."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        found = None if fenced else PLACEHOLDER.match(line)
        if found is None:
            out.append(line)
            continue
        kind, args = found["kind"], shlex.split(found["args"])
        if kind not in GENERATORS:
            known = ", ".join(GENERATORS)
            raise PlaceholderError(f"unknown placeholder 'generated: {kind}' (known: {known})")
        out.append(GENERATORS[kind](root, args, page).rstrip("\n"))
    return "\n".join(out) + "\n"


def _project(root: Path) -> None:
    """The repository's own packages first on the import path, and proof that they are the ones
    imported (not those of another checkout that an editable install points to)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import flows  # noqa: PLC0415
    import pipeline_tasks  # noqa: PLC0415

    for package in (flows, pipeline_tasks):
        if not Path(package.__file__ or "").resolve().is_relative_to(root):
            raise PlaceholderError(f"{package.__name__} is imported from {package.__file__}, not from "
                                   f"{root}: the site would document another checkout's code")


def _no_args(kind: str, args: list[str]) -> None:
    if args:
        raise PlaceholderError(f"'generated: {kind}' takes no arguments, got {args}")


def _inside(root: Path, path: str) -> Path:
    full = (root / path).resolve()
    if not full.is_relative_to(root):
        raise PlaceholderError(f"{path}: outside the repository")
    return full


def _missing(path: str) -> str:
    """The note for a benchmark's results file that is not there yet; raises for any other file."""
    for pattern, command in BENCH_COMMANDS.items():
        if re.fullmatch(pattern, Path(path).name):
            return f"(not run yet: `{command}`)\n"
    raise PlaceholderError(f"{path}: no such file, and no benchmark in BENCH_COMMANDS writes it")


def _fence(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- the command line -----------------------------------------------------------------------

def _cli(root: Path, args: list[str], page: str) -> str:
    _no_args("cli", args)
    _project(root)
    import argparse  # noqa: PLC0415

    from flows.cli.main import build_parser  # noqa: PLC0415

    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: the same text everywhere
    try:
        parser, parts = build_parser(), []

        def add(name: str, p: argparse.ArgumentParser, depth: int) -> None:
            parts.append(f"{'#' * depth} `{name}`\n\n{_fence(p.format_help())}")
            for sub, child in subparsers(p).items():
                add(f"{name} {sub}", child, depth + 1)

        add("pretrainflow", parser, 3)
        return "\n".join(parts)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


# ---- settings -------------------------------------------------------------------------------

def _params(root: Path, args: list[str], page: str) -> str:
    """params.yaml as it is, one code block per section under a heading (its comments document
    each key); checked against the parsed file, so no section is left out."""
    _no_args("params", args)
    import yaml  # noqa: PLC0415

    text = (root / "params.yaml").read_text()
    sections: dict[str, list[str]] = {}
    head: list[str] = []
    current: list[str] = head
    for line in text.splitlines():
        top = re.match(r"^([A-Za-z_]\w*):", line)
        if top:
            current = sections.setdefault(top[1], [])
        current.append(line)
    parsed = yaml.safe_load(text)
    if list(parsed) != list(sections):
        raise PlaceholderError(f"params.yaml: sections {list(parsed)} parsed, {list(sections)} found by line")
    parts = [_fence("\n".join(head).strip(), "yaml")] if any(h.strip() for h in head) else []
    for name, lines in sections.items():
        parts.append(f"### `{name}`\n\n{_fence(chr(10).join(lines).strip(), 'yaml')}")
    return "\n".join(parts)


def _presets(root: Path, args: list[str], page: str) -> str:
    _no_args("presets", args)
    _project(root)
    from pipeline_tasks.recipes import PRESETS  # noqa: PLC0415

    rows = [[f"`--preset {name}`", " ".join(f"`{s}`" for s in sets)] for name, sets in PRESETS.items()]
    return _table(["preset", "the settings it applies (each `--set` still wins)"], rows)


# ---- the stage graph ------------------------------------------------------------------------

def _stages(root: Path, args: list[str], page: str) -> str:
    _no_args("stages", args)
    _project(root)
    from flows.orchestration.graph import STAGES  # noqa: PLC0415

    def code(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{i}`" for i in items) or "-"

    rows = [[f"`{s.name}`", f"`{s.task}`", f"`{s.runner}.run_{s.name}`", s.description, code(s.params),
             code(s.deps), code((*s.outs, *s.metrics, *s.untracked_outs))] for s in STAGES]
    return _table(["stage", "Prefect task", "runner", "what", "params read", "inputs", "outputs"], rows)


def _stage_files(root: Path, args: list[str], page: str) -> str:
    _no_args("stage-files", args)
    _project(root)
    from flows.orchestration.graph import STAGES  # noqa: PLC0415

    rows = []
    for s in STAGES:
        named = dict.fromkeys((*s.proof, *s.metrics, *s.plots, *s.untracked_outs))  # in order, once
        rows.append([f"`{s.name}`", ", ".join(f"`{p}`" for p in named) or "-",
                     f"`{s.lineage}`" if s.lineage else "-"])
    return _table(["stage", "files it writes (and checks on a cache hit)", "its lineage record"], rows)


# ---- the validation gate --------------------------------------------------------------------

def _checks(root: Path, args: list[str], page: str) -> str:
    """Every expectation of the gate's suites (built by the gate's own code, with an expected
    label set so that its check is listed too), in words, with its setting and default, and the
    fix the report gives when it fails."""
    _no_args("checks", args)
    _project(root)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from pipeline_tasks.config import load_config  # noqa: PLC0415
    from pipeline_tasks.data.expectations import _suites  # noqa: PLC0415
    from pipeline_tasks.data.report import _FIXES, CHECKS  # noqa: PLC0415

    defaults = load_config(str(root / "params.yaml")).validate_
    suites = _suites(defaults.model_copy(update={"expected_classes": ["(your classes)"]}))
    rows = []
    for suite, expectations in suites.items():
        for e in expectations:
            column = e.configuration.kwargs.get("column")
            if column not in CHECKS or column not in _FIXES:
                raise PlaceholderError(f"gate check on column {column!r} has no words in data/report.py")
            param = CHECK_PARAMS.get(column)
            setting = f"`validate.{param}` ({_yaml_value(getattr(defaults, param))})" if param else "-"
            rows.append([f"`{suite}`", CHECKS[column], f"`{column or '(rows)'}`", setting, _FIXES[column]])
    return _table(["suite", "check", "column", "setting (default)", "what to do when it fails"], rows)


def _yaml_value(value: Any) -> str:
    """A default as params.yaml writes it: ``null``, ``[PNG, JPEG]``, ``10.0``."""
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


# ---- the code's layout ----------------------------------------------------------------------

def _first_paragraph(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _layout(root: Path, args: list[str], page: str) -> str:
    """Each package of flows/ and pipeline_tasks/ with its docstring, then its modules with the
    first paragraph of theirs."""
    _no_args("layout", args)
    parts = []
    for top in ("flows", "pipeline_tasks"):
        packages = [root / top, *sorted(p.parent for p in (root / top).glob("*/__init__.py"))]
        for package in packages:
            name = package.relative_to(root).as_posix()
            about = _first_paragraph(package / "__init__.py")
            parts.append(f"### `{name}/`\n\n{about or '(no package docstring)'}\n")
            modules = sorted(m for m in package.glob("*.py") if m.name != "__init__.py")
            if modules:
                rows = [[f"`{m.name}`", _first_paragraph(m)] for m in modules]
                parts.append(_table(["module", "what"], rows))
    return "\n".join(parts)


# ---- benchmark outputs ----------------------------------------------------------------------

def _number(text: str) -> str:
    """A float written with more than 3 decimals, to 3 (bench CSVs hold raw means)."""
    if re.fullmatch(r"-?\d+\.\d{4,}", text):
        return f"{float(text):.3f}"
    return text


def _csv(root: Path, args: list[str], page: str) -> str:
    if not args:
        raise PlaceholderError("'generated: csv' needs a path")
    path, wanted = args[0], args[1:]
    full = _inside(root, path)
    if not full.is_file():
        return _missing(path)
    with full.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise PlaceholderError(f"{path}: empty")
    header, body = rows[0], rows[1:]
    unknown = [c for c in wanted if c not in header]
    if unknown:
        raise PlaceholderError(f"{path}: no column {unknown} (columns: {header})")
    keep = [header.index(c) for c in wanted] if wanted else list(range(len(header)))
    table = _table([header[i] for i in keep], [[_number(row[i]) for i in keep] for row in body])
    return f"{table}\n*From `{path}`.*\n"


def _text(root: Path, args: list[str], page: str) -> str:
    if len(args) != 1:
        raise PlaceholderError(f"'generated: text' takes one path, got {args}")
    full = _inside(root, args[0])
    if not full.is_file():
        return _missing(args[0])
    return f"{_fence(full.read_text())}\n*From `{args[0]}`.*\n"


# ---- the README ------------------------------------------------------------------------------

def _readme(root: Path, args: list[str], page: str) -> str:
    """The README's ``## SECTION``, up to its next ``## `` heading, with its links into docs/
    made relative to ``page`` (one text for the newcomer's page and the site)."""
    if len(args) != 1:
        raise PlaceholderError(f"'generated: readme' takes one section title, got {args}")
    lines = (root / "README.md").read_text().splitlines()
    try:
        start = lines.index(f"## {args[0]}")
    except ValueError:
        raise PlaceholderError(f"README.md has no section '## {args[0]}'") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    up = "../" * page.count("/")
    body = "\n".join(lines[start + 1:end]).strip()
    return re.sub(r"\]\(docs/", f"]({up}", body) + "\n"


# Each generator takes the repository root, the placeholder's arguments and the page (relative
# to docs/), and returns markdown.
GENERATORS: dict[str, Callable[[Path, list[str], str], str]] = {
    "cli": _cli, "params": _params, "presets": _presets, "stages": _stages, "stage-files": _stage_files,
    "checks": _checks, "layout": _layout, "csv": _csv, "text": _text,
    "readme": _readme,
}
