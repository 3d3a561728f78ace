"""The README and docs/*.md link to each other by file and by heading: every relative link, every
`#anchor` and every project file they name in backticks must exist.

Anchors are GitHub's: a heading's text without its markup, lowercased, with everything but letters,
digits, spaces, `-` and `_` dropped and spaces turned into `-` (a repeated heading gets `-1`, `-2`, ...).
Pure text work, no imports of the project: a few milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# A project file named in backticks: `tasks/params.py`, `bench/bench_spend.py`, `configs/README.md`.
FILE_SPAN = re.compile(
    r"`((?:aggregation|bench|configs|crowdclust|docs|emulator|flows|tasks|tests)/[\w./-]+"
    r"\.(?:py|md|yaml|yml|json|tsv|toml))"
)


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a file's headings give."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line: target (why)` for every relative link or anchor of `path` that does not resolve."""
    problems = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = CODE_SPAN.sub("", line)
        for match in LINK.finditer(prose):
            target = match.group("target")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not linked.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{where} (no such heading in {linked.name})")
        for match in FILE_SPAN.finditer(line):
            if not (root / match.group(1)).exists():
                problems.append(f"{path.relative_to(root)}:{number}: `{match.group(1)}` (no such file)")
    return problems


def test_every_link_anchor_and_named_file_of_the_docs_resolves():
    problems = [problem for doc in DOCS for problem in broken_links(doc)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_broken_link_anchor_and_file(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Real heading (`--flag`)\n", encoding="utf-8")
    doc = tmp_path / "README.md"
    doc.write_text(
        "# Top\n\n"
        "[fine](docs/other.md#real-heading---flag) [fine too](#top)\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#no-such) [bad here](#nowhere)\n"
        "`tasks/no_such_module.py`\n"
        "```\n[in code](docs/missing-too.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(doc, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/missing.md (no such file)",
        "docs/other.md#no-such (no such heading in other.md)",
        "#nowhere (no such heading in README.md)",
        "`tasks/no_such_module.py` (no such file)",
    ]


def test_headings_give_githubs_anchors():
    assert slug("Queries with M = 5") == "queries-with-m--5"
    assert slug("The prior's terms") == "the-priors-terms"
    assert slug("Small clusters (`--min-cluster-size`)") == "small-clusters---min-cluster-size"
    assert slug("At 10,000 items") == "at-10000-items"
