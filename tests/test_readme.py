"""The README's module table is the map of the house: it names every module, and only modules that are there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_table_names_every_module_and_no_other():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `fedq/")]
    named = {path for row in rows for path in re.findall(r"`(fedq/[\w/]+(?:\.py|/))`", row.split("|")[1])}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "fedq").glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    packages = {str(p.relative_to(ROOT)) + "/" for p in (ROOT / "fedq").iterdir() if (p / "__init__.py").exists()}
    assert named == modules | packages, f"missing: {sorted((modules | packages) - named)}; gone: {sorted(named - modules - packages)}"
