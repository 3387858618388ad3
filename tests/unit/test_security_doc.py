"""docs/security.md names, for each promise, the test that holds it: each one named exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_test_the_security_page_names_exists():
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    named = NAMED.findall(text)
    assert len(named) >= 40
    missing = [f"{path}::{name}" for path, name in named
               if not (ROOT / path).is_file()
               or (name and f"def {name}(" not in (ROOT / path).read_text(encoding="utf-8"))]
    assert not missing, missing
