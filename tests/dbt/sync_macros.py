"""Copy ``macros/`` (the one source of the Jinja) to where it ships.

The adapter's include path (``dbt/include/pgtrickle/macros``) and the Hub package
(``hub_package/macros``) carry byte-identical copies; ``test_macro_copies.py`` fails when they
drift. Run ``python tests/dbt/sync_macros.py`` after editing a macro.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "macros"
COPIES = (ROOT / "dbt" / "include" / "pgtrickle" / "macros", ROOT / "hub_package" / "macros")


def macro_files(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``folder`` (caches excluded)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def sync() -> list[Path]:
    """Make every copy identical to ``macros/``; returns the copies that changed."""
    wanted = macro_files(SOURCE)
    changed = []
    for copy in COPIES:
        if copy.exists() and macro_files(copy) == wanted:
            continue
        shutil.rmtree(copy, ignore_errors=True)
        for rel, content in wanted.items():
            target = copy / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        changed.append(copy)
    return changed


if __name__ == "__main__":
    for path in sync():
        print(f"updated {path.relative_to(ROOT)}")
    sys.exit(0)
