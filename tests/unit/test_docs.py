"""The documentation: the README stays a newcomer's page (short, nothing outside the repository),
every page of docs/ is in the site's nav, and docs/hooks.py renders every placeholder of every
page. `make docs` (in CI) runs `mkdocs build --strict` itself; these checks need no MkDocs.

The CI image (docker/Dockerfile, target ci) carries tests/ and README.md but not docs/: the
site's checks are skipped there, the README's are not."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README_MAX_WORDS = 1600
needs_site = pytest.mark.skipif(not (REPO / "mkdocs.yml").is_file(),
                                reason="no mkdocs.yml (the CI image has no docs/)")


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[str]:
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def nav_pages(nav: list) -> list[str]:
    found = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def test_the_readme_is_a_newcomers_page() -> None:
    words = len((REPO / "README.md").read_text().split())
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words (at most {README_MAX_WORDS}): move details into docs/ and link them")


def test_the_readme_cites_nothing_outside_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    assert not re.search(r"(?<![\w.])\.\./", text), "the README names a path outside the repository"
    assert not re.search(r"\]\((\.\./|/)", text), "a README link leaves the repository"


@needs_site
def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    assert sorted(listed) == pages(), "docs/ and mkdocs.yml's nav differ"
    assert config["hooks"] == ["docs/hooks.py"]
    assert config["theme"]["font"] is False  # no web fonts: the build and the site work offline


@needs_site
@pytest.mark.parametrize("page", pages() if DOCS.is_dir() else [])
def test_the_hook_renders_every_placeholder(page: str) -> None:
    text = (DOCS / page).read_text()
    rendered = hooks().render(text, REPO, page)
    assert "<!-- generated:" not in rendered.replace("`<!-- generated:", ""), f"{page}: a placeholder is left"
    assert "Traceback" not in rendered


@needs_site
def test_an_unknown_placeholder_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        hooks().render("<!-- generated: nonsense -->\n", REPO)


@needs_site
def test_a_results_file_not_there_yet_says_how_to_make_it() -> None:
    h = hooks()
    assert "(not run yet: `python bench/transfer.py" in h.render(
        "<!-- generated: csv bench/results/transfer_not_here.csv -->\n", REPO)
    with pytest.raises(ValueError, match="no benchmark"):
        h.render("<!-- generated: csv bench/results/typo.csv -->\n", REPO)
    with pytest.raises(ValueError, match="outside the repository"):
        h.render("<!-- generated: text ../outside.txt -->\n", REPO)


@needs_site
def test_a_csv_renders_as_a_table_of_the_columns_asked(tmp_path: Path) -> None:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "x.csv").write_text("mode,mean,std\nfull,0.96066666,0.0011\n")
    out = hooks().render("<!-- generated: csv bench/results/x.csv mode mean -->\n", tmp_path)
    assert "| mode | mean |" in out and "| full | 0.961 |" in out and "std" not in out.split("*From")[0]


@needs_site
def test_placeholders_inside_code_fences_are_left_alone() -> None:
    text = "```\n<!-- generated: nonsense -->\n```\n"
    assert hooks().render(text, REPO) == text
