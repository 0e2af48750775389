"""Upload files to the service and follow the ingestion job's progress until it ends.

    python examples/upload_client.py report.pdf minutes.docx [--url http://127.0.0.1:8000]

The upload answers 202 with a job; `/api/v1/jobs/{id}/events` streams the job (the same JSON as
`GET /api/v1/jobs/{id}`) at every step, then `data: [DONE]`. Exits 1 when a file failed, naming it and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import httpx


def upload(paths: list[str], url: str = "http://127.0.0.1:8000") -> dict:
    with contextlib.ExitStack() as files_open:
        files = [("files", (Path(p).name, files_open.enter_context(open(p, "rb")))) for p in paths]
        response = httpx.post(f"{url}/api/v1/documents/upload", files=files, timeout=120)
    if response.status_code != 202:
        error = response.json()["error"]
        raise RuntimeError(f"HTTP {response.status_code} {error['type']}: {error['message']}")
    job = response.json()
    with httpx.stream("GET", f"{url}/api/v1/jobs/{job['id']}/events", timeout=httpx.Timeout(10, read=None)) as events:
        for line in events.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue  # pings, separators and the end
            job = json.loads(line[5:])
            print(f"{job['state']}: {job['chunks_done']}/{job['chunks_total'] or '?'} chunks", file=sys.stderr)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    job = upload(args.paths, args.url)
    for file in job["files"]:
        print(f"{file['name']}: {file['state']}, {file['chunks_done']} chunks, document {file['document_id']}")
    for error in job["errors"]:
        print(f"{error['file']} failed: {error['message']}", file=sys.stderr)
    sys.exit(1 if job["errors"] else 0)


if __name__ == "__main__":
    main()
