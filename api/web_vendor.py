"""The page's two third-party browser modules, marked (Markdown) and DOMPurify (sanitizing the HTML it makes).

`python -m api.web_vendor` (run by `make install`) fetches each pinned package from the npm registry, checks it
against the registry's sha512 integrity, and unpacks the one ES module the page imports, with its licence, into
`.cache/web/` (outside git; no Node needed). The page serves them under `/static/vendor/`. Without them (an install
that could not reach the registry) the page shows answers as plain text, which is safe too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
from dataclasses import dataclass

from config import PROJECT_DIR

VENDOR_DIR = PROJECT_DIR / ".cache" / "web"
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # as the registry publishes it (dist.integrity)
    module: str  # the file inside the tarball
    target: str  # its name under VENDOR_DIR
    licence: str

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"


PACKAGES = [
    Package(
        "marked",
        "18.2.1",
        "sha512-ii4bxCTCqqwpT86XZWgJNs+ZnAIZksmLGYMViWA7PDIXYIeNo1x6cDdX3JOip9NM/cI6p8z57FxliACboTruMA==",
        "package/lib/marked.esm.js",
        "marked.esm.js",
        "package/LICENSE",
    ),
    Package(
        "dompurify",
        "3.4.18",
        "sha512-ofe3wI/uNm68HInABYFJYqQxRw1EaKAjNdrFVKqjUY+UZurvNd2L/HuQe097s/4RivWiZyP6tT7aoT8atjfhwg==",
        "package/dist/purify.es.mjs",
        "purify.js",  # .js: served as JavaScript whatever the platform's MIME table says of .mjs
        "package/LICENSE",
    ),
]


def install(package: Package) -> None:
    import httpx  # here, not at the top: the service imports this module for VENDOR_DIR, and httpx costs it 5 MiB

    target = VENDOR_DIR / package.target
    if target.exists():
        return
    data = httpx.get(package.tarball, timeout=60, follow_redirects=True).raise_for_status().content
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != package.integrity:
        raise SystemExit(f"{package.name}-{package.version}: integrity mismatch ({digest})")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        module, licence = (_read(archive, name) for name in (package.module, package.licence))
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    (VENDOR_DIR / f"{package.name}.LICENSE").write_bytes(licence)
    partial = target.with_suffix(".part")
    partial.write_bytes(module)
    partial.replace(target)  # a half-written module is never served


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    if member is None:
        raise SystemExit(f"{name} is not a file in the package")
    return member.read()


def main() -> None:
    import httpx

    for package in PACKAGES:
        try:
            install(package)
        except (httpx.HTTPError, OSError) as exc:
            # Not fatal: the page falls back to plain-text answers.
            print(f"warning: {package.name} not installed ({exc}); answers will show as plain text", file=sys.stderr)


if __name__ == "__main__":
    main()
