"""docs/configuration.md, written from `Settings` itself, so the table can never drift from the code.

    .venv/bin/python scripts/configuration_doc.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/configuration_doc.py --check   # exit 1 if it is out of date (a test runs this)

Every key, its default and its description come from the fields; the groups are the `# --- group ---` comments
that divide the class in `config.py`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from config import PROJECT_DIR, Settings

TARGET = PROJECT_DIR / "docs" / "configuration.md"
_GROUP = re.compile(r"^    # --- (.+?) -+$")
_FIELD = re.compile(r"^    (\w+): ")

HEADER = """# Configuration

Settings come from the environment or a `.env` file in the project directory (copy `.env.example`, which lists
every key with its default). Names are case-insensitive. Lists (`API_KEYS`, `CORS_ORIGINS`) are comma-separated.
Relative paths are taken from the project directory. A value out of range stops the service at start-up with a
message naming the key.

This page is written from `config.py` by `scripts/configuration_doc.py`; a test fails when it is out of date.
"""


def groups() -> list[tuple[str, list[str]]]:
    """(group title, field names) in the order of `config.py`."""
    found: list[tuple[str, list[str]]] = []
    for line in (PROJECT_DIR / "config.py").read_text(encoding="utf-8").splitlines():
        if match := _GROUP.match(line):
            found.append((match.group(1), []))
        elif (match := _FIELD.match(line)) and match.group(1) in Settings.model_fields and found:
            found[-1][1].append(match.group(1))
    return found


def default_of(name: str) -> str:
    field = Settings.model_fields[name]
    value: Any = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, list):
        return "empty" if not value else ",".join(str(v) for v in value)
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return str(value.relative_to(PROJECT_DIR)) if value.is_relative_to(PROJECT_DIR) else str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render() -> str:
    parts = [HEADER]
    listed: set[str] = set()
    for title, names in groups():
        parts.append(f"\n## {title[0].upper()}{title[1:]}\n\n| key | default | meaning |\n|---|---|---|")
        for name in names:
            description = (Settings.model_fields[name].description or "").replace("|", "\\|")
            parts.append(f"| `{name.upper()}` | `{default_of(name)}` | {description} |")
            listed.add(name)
    missing = set(Settings.model_fields) - listed
    if missing:  # a field outside every group would silently vanish from the page
        raise SystemExit(f"fields outside a `# --- group ---` comment in config.py: {sorted(missing)}")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(PROJECT_DIR)} is out of date: run scripts/configuration_doc.py")
            raise SystemExit(1)
        return
    TARGET.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
