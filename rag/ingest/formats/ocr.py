"""OCR of scanned pages and images: Tesseract 5 (Debian's `tesseract-ocr` with its English model, installed by
`make run` and `make test` and carried by the container image; nothing is downloaded at run time).

Chosen over the `rapidocr` wheel on the figures the issue records and ours (docs/benchmarks.md): Tesseract read a
page rendered at 200 dpi with no word wrong in about 2 s on one core, where rapidocr garbled a line in 4-9 s. It runs
as a process of its own per page, started from the parser process, so it is under the same memory cap and dies with
it; one thread (`OMP_THREAD_LIMIT=1`: its OpenMP threads took 10-35 s a page on a busy 2-core machine). A page is
rendered (PDF) or decoded (PNG, JPEG, TIFF) to 8-bit grey and handed over as PNG on its standard input. A page over
OCR_MAX_PIXELS or slower than OCR_TIMEOUT_SECONDS fails the file by name.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from rag.errors import UnreadableFile
from rag.ingest.parse_worker import die_with_parent

DPI = 200  # what Tesseract reads best at for body text, per its documentation


def available() -> bool:
    return shutil.which("tesseract") is not None


def read_png(png: bytes, what: str, timeout: float, languages: str) -> str:
    """The text of one page image (PNG bytes)."""
    if not available():
        raise UnreadableFile(
            f"{what} needs OCR, which is not installed here (apt install tesseract-ocr tesseract-ocr-eng; OCR=false "
            "turns it off)"
        )
    try:
        done = subprocess.run(
            ["tesseract", "stdin", "stdout", "-l", languages, "--psm", "3"],
            input=png,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            preexec_fn=die_with_parent,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UnreadableFile(f"OCR of {what} took longer than {timeout:g} s (OCR_TIMEOUT_SECONDS)") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no reason given"]
        raise UnreadableFile(f"OCR of {what} failed: {reason[0]}")
    return done.stdout.decode("utf-8", "replace").replace("\f", "").strip()


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.convert("L").save(out, format="PNG")
    return out.getvalue()


def pdf_page_png(page: Any, number: int, max_pixels: int) -> bytes:
    """A PDF page (pypdfium2) rendered for OCR, refused when it would exceed `max_pixels`."""
    width, height = page.get_size()  # points
    pixels = int(width * DPI / 72) * int(height * DPI / 72)
    if pixels > max_pixels:
        raise UnreadableFile(
            f"page {number} has no text layer and is too large to OCR: {pixels:,} pixels at {DPI} dpi; the limit is "
            f"{max_pixels:,} (OCR_MAX_PIXELS)"
        )
    return _png(page.render(scale=DPI / 72, grayscale=True).to_pil())


def image_pages(data: bytes, max_pages: int, max_pixels: int) -> Iterator[bytes]:
    """Each frame of a PNG, JPEG or TIFF (a TIFF may hold many pages) as PNG for OCR."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow then refuses a larger image before decoding it
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableFile("not an image Pillow can read (PNG, JPEG or TIFF)") from None
    except Image.DecompressionBombError:
        raise UnreadableFile(f"the image is larger than {max_pixels:,} pixels (OCR_MAX_PIXELS)") from None
    if image.format not in ("PNG", "JPEG", "TIFF", "MPO"):
        raise UnreadableFile(f"a {image.format} image; PNG, JPEG and TIFF are read")
    frames = getattr(image, "n_frames", 1)
    if frames > max_pages:
        raise UnreadableFile(f"the image has {frames} pages; the limit is {max_pages} (MAX_UPLOAD_PAGES)")
    for frame in ImageSequence.Iterator(image):
        if frame.width * frame.height > max_pixels:
            raise UnreadableFile(f"a page is larger than {max_pixels:,} pixels (OCR_MAX_PIXELS)")
        try:
            yield _png(frame)
        except (OSError, SyntaxError) as exc:  # Pillow's errors for a truncated or damaged image
            raise UnreadableFile(f"cannot decode the image: {exc}") from None
