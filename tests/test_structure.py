"""House rules read from the repository itself: no module of the package over MAX_LINES lines
(split by responsibility instead)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "facegen_ray"
MAX_LINES = 400

# Modules over the limit while other work splits them (remove each entry once it is split):
OVERSIZE_ALLOWED = {
    "serve/ingress.py",  # the typed ingress <-> replica render call splits it
    "serve/replica.py",  # the same change
    "data/comparison.py",  # being reworked for rater identity / votes per rater
    "lifecycle/gate.py",  # the same change
}


def module_lines() -> dict[str, int]:
    return {
        p.relative_to(PACKAGE_DIR).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def test_no_module_over_the_line_limit():
    lines = module_lines()
    over = {m: n for m, n in lines.items() if n > MAX_LINES and m not in OVERSIZE_ALLOWED}
    assert not over, f"modules over {MAX_LINES} lines (split them by responsibility): {over}"


def test_the_allow_list_names_real_oversize_modules():
    """An entry that is gone or back under the limit is removed, so the list only shrinks."""
    lines = module_lines()
    stale = sorted(m for m in OVERSIZE_ALLOWED if lines.get(m, 0) <= MAX_LINES)
    assert not stale, f"remove from OVERSIZE_ALLOWED (missing or within {MAX_LINES} lines): {stale}"
