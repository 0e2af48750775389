"""The README and docs/ cannot drift from the code: the configuration page is written from `Settings`, every route
and error type is in the API reference, and every example (curl, Python, JavaScript) runs against a live server.

Rules for a fenced block in README.md and docs/*.md:
- `bash`, `python` and `js` blocks run, in document order, in a folder holding the files they upload
  (`report.pdf`, `minutes.docx`), with `localhost:8000` pointed at the live server. curl fails on an HTTP error
  unless the line before the block is `<!-- shows an error -->`.
- A `python` or `js` block found word for word in a file under `examples/` is that file's code, which
  `tests/test_clients.py` (the clients) or `tests/test_plugins.py` (the plug-ins) runs as a user would; here it is
  only checked to be there.
- A block whose preceding line is `<!-- not run: why -->` is reported as skipped, with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from api import web_page, websocket
from api.errors import _HTTP_TYPES, STATUS_TABLE
from bench import sample_files
from config import PROJECT_DIR
from main import API_PREFIX, create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream

PAGES = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
RUNNABLE = {"bash", "python", "js"}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_MARKER = re.compile(r"<!-- (not run: .+?|shows an error) -->\s*$")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    language: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(PROJECT_DIR)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match.group(1) not in RUNNABLE:
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = _MARKER.search(before)
            line = text[: match.start()].count("\n") + 1
            found.append(Example(page, line, match.group(1), match.group(2), marker.group(1) if marker else None))
    return found


EXAMPLES = examples()
EXAMPLE_FILES = {path: path.read_text(encoding="utf-8") for path in (PROJECT_DIR / "examples").rglob("*.*")}


def test_the_configuration_page_is_written_from_settings() -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "configuration_doc.py"), "--check"],
        capture_output=True, text=True, cwd=PROJECT_DIR,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_is_in_env_example() -> None:
    from config import Settings

    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (PROJECT_DIR / ".env.example").read_text(), re.M))
    assert {name.upper() for name in Settings.model_fields} - listed == set()


def test_every_route_is_in_the_api_reference(tmp_path: Path) -> None:
    reference = (PROJECT_DIR / "docs" / "api.md").read_text(encoding="utf-8")
    table = reference[reference.index("## Routes") : reference.index("## Errors")]
    schema = create_app(make_settings(tmp_path)).openapi()
    routes = {f"{method.upper()} {path}" for path, methods in schema["paths"].items() for method in methods}
    # WebSocket routes and the page are outside the OpenAPI schema: taken from their routers.
    routes |= {f"WS {API_PREFIX}{route.path}" for route in websocket.router.routes}  # type: ignore[attr-defined]
    routes |= {f"WS {route.path}" for route in websocket.legacy_router.routes}  # type: ignore[attr-defined]
    routes |= {f"GET {route.path}" for route in web_page.router.routes}  # type: ignore[attr-defined]
    assert len(routes) > 20
    assert sorted(route for route in routes if f"`{route}`" not in table and f"{route}`" not in table) == []


def test_every_error_type_is_in_the_api_reference() -> None:
    reference = (PROJECT_DIR / "docs" / "api.md").read_text(encoding="utf-8")
    types = {error.error_type for error, _ in STATUS_TABLE if hasattr(error, "error_type")} | set(_HTTP_TYPES.values())
    types -= {"bad_request", "method_not_allowed"}  # framework answers to malformed HTTP, not the API's own
    assert {t for t in types if f"`{t}`" not in reference} == set()


def test_every_page_links_from_the_readme() -> None:
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples run: the files they upload, as a user would have them."""
    folder = tmp_path_factory.mktemp("examples")
    (folder / "report.pdf").write_bytes(sample_files.pdf(["The harbour report: cranes, tides and the ferry."]))
    (folder / "minutes.docx").write_bytes(sample_files.docx(["Minutes: the board approved the new ferry."]))
    return folder


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_the_example_runs(example: Example, live_url: str, upstream: FakeUpstream, workdir: Path) -> None:
    if example.marker and example.marker.startswith("not run"):
        pytest.skip(example.marker)
    if example.language in ("python", "js") and any(example.code in text for text in EXAMPLE_FILES.values()):
        return  # the examples/ file it is taken from runs in tests/test_clients.py or tests/test_plugins.py
    host = live_url.removeprefix("http://")
    code = example.code.replace("localhost:8000", host).replace("127.0.0.1:8000", host)
    match example.language:
        case "bash":
            strict = "" if example.marker == "shows an error" else "--fail-with-body "
            command = ["bash", "-euo", "pipefail", "-c", f'curl() {{ command curl {strict}-sS "$@"; }}\n{code}']
        case "python":
            command = [sys.executable, "-c", code]
        case _:
            if shutil.which("node") is None:
                pytest.skip("node is not installed")
            command = ["node", "--input-type=module", "-e", code]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{example.id} failed:\n{result.stdout}\n{result.stderr}"
    if example.marker == "shows an error":
        assert '"error"' in result.stdout, result.stdout
