"""The documentation stays true to the code: the README is a front page, the zoo table is generated,
links resolve, and every command has its page."""

from __future__ import annotations

import doctest
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from typer.testing import CliRunner

from eqsurgeon.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md is a front page; move manual content to docs/"
    assert "make demo" in text and "make test" in text


def test_zoo_table_is_generated_from_models_json() -> None:
    gen = _gen_zoo()
    result = CliRunner().invoke(app, ["models", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["models"], "eqsurgeon models listed no model"
    expected = gen.zoo_table(document)
    assert gen.table_in((DOCS / "zoo.md").read_text()) == expected, (
        "docs/zoo.md's table differs from `eqsurgeon models --format json`; "
        "run `python docs/gen_zoo.py --write`"
    )
    for row in document["models"]:  # the generator dropped no model
        assert f"| `{row['name']}` |" in expected


def test_gen_zoo_examples_hold() -> None:
    result = doctest.testmod(_gen_zoo())
    assert result.attempted > 0 and result.failed == 0


def test_relative_links_resolve() -> None:
    checked, broken = 0, []
    for page in PAGES:
        for target in _links(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            checked += 1
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert checked > 20, f"only {checked} relative links found; is the link pattern still right?"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_command_has_a_page() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = _help_commands(result.output)
    assert listed == [c.name for c in app.registered_commands], "`eqsurgeon --help` lists other commands"
    assert len(listed) >= 8, listed
    pages = {p.stem for p in (DOCS / "commands").glob("*.md")}
    assert sorted(set(listed) - pages) == [], "commands without a page in docs/commands/"
    assert sorted(pages - set(listed)) == [], "pages in docs/commands/ for commands that do not exist"


def test_docs_cite_no_issue_numbers() -> None:
    for page in PAGES:
        hits = re.findall(r"\bissues? #?\d+|(?<![\w/&])#\d+\b", page.read_text(), re.I)
        assert not hits, f"{page.relative_to(ROOT)} refers to issue numbers: {hits}"


def test_link_and_anchor_helpers() -> None:
    text = "# The A/B comparison\n## `eqsurgeon analyze`\n```\n[x](in-code.md)\n```\n[a](b.md#c) `[d](e.md)`"
    assert _links(text) == ["b.md#c"]
    assert _anchors(text) == {"the-ab-comparison", "eqsurgeon-analyze"}


def _help_commands(help_text: str) -> list[str]:
    """Command names in the Commands section of `--help` (rich panel or plain click layout)."""
    section = help_text.split("Commands", 1)[1] if "Commands" in help_text else ""
    return re.findall(r"^[│|]? {1,2}([a-z][\w-]*) {2,}\S", section, re.M)


def _gen_zoo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_zoo", DOCS / "gen_zoo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans (link texts may hold code spans)."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return LINK.findall(prose)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for title in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors
