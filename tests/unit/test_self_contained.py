"""Nothing in the repository points outside it: no build-machine paths, no absent files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}
TEXT = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".sql", ".proto", ".cfg", ".txt", ".xml", ""}
# The one allowed mention: the contract test compares with the agreed contract
# where a checkout has it beside it, and skips elsewhere.
ALLOWED = {"tests/unit/test_schemas.py"}
# Bracketed letters keep this pattern from matching its own source text.
OUTSIDE = re.compile(r"DESIG[N]\.md|\.\./share[d]|/wor[k]/|/roo[t]/|/home/\w+/")


def repository_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in path.parts):
            continue
        if path.is_file() and path.suffix in TEXT and path.stat().st_size < 2_000_000:
            out.append(path)
    return out


def test_no_file_refers_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    found = []
    for path in repository_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED or path == this:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
