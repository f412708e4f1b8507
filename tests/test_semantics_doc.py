"""Every "rule N" the code, the tests and the README cite is a rule of docs/semantics.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"\brules? (\d+)((?:(?:, | and |-)\d+)*)", re.IGNORECASE)


def _rules() -> set[int]:
    return {int(n) for n in re.findall(r"^### (\d+)\. ", (ROOT / "docs" / "semantics.md").read_text(), re.MULTILINE)}


def _cited() -> dict[int, list[str]]:
    cited: dict[int, list[str]] = {}
    files = [*(ROOT / "fedq").rglob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "README.md"]
    for path in files:
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            for first, rest in CITATION.findall(line):
                for n in [int(first), *map(int, re.findall(r"\d+", rest))]:
                    cited.setdefault(n, []).append(f"{path.relative_to(ROOT)}:{line_no}")
    return cited


def test_the_rules_are_numbered_one_to_fifteen():
    assert _rules() == set(range(1, 16))


def test_every_cited_rule_exists():
    cited = _cited()
    assert len(cited) >= 10  # the pattern still finds the citations
    missing = {n: where for n, where in cited.items() if n not in _rules()}
    assert not missing, f"cited rules that docs/semantics.md does not have: {missing}"
