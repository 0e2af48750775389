"""The web chat page: `/` serves `web/index.html`, `/static/*` its CSS and JavaScript module, `/static/vendor/*` the
two browser modules `api.web_vendor` installs. No build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.web_vendor import VENDOR_DIR

WEB_DIR = Path(__file__).resolve().parent / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount_web_page(app: FastAPI) -> None:
    app.include_router(router)
    # Before /static, which would otherwise take these paths; check_dir=False: absent, the page renders plain text.
    app.mount("/static/vendor", StaticFiles(directory=VENDOR_DIR, check_dir=False), name="vendor")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
