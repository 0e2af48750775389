"""The formats beyond the first five, each from a real file made by a real library (bench/sample_files.py): slides,
sheets and CSV, e-books, mail and mailboxes, scanned pages and images read by OCR. Parsed in-process here (what the
parser process runs), each section cited where it came from; hostile variants fail by name; and end to end through
an upload, a slide's and a sheet's citations reach the search results."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from bench import sample_files
from rag.errors import UnreadableFile, UnsupportedFileType
from rag.ingest.formats import ocr
from rag.ingest.parsers import ParseLimits, Section, detect_kind, parse
from tests.test_uploads import upload, wait_for

LIMITS = ParseLimits()
needs_ocr = pytest.mark.skipif(not ocr.available(), reason="tesseract is not installed (make install-dev installs it)")


def located(sections: list[Section]) -> dict[str, str]:
    return {str(s.location): s.text for s in sections}


def test_slides_give_their_text_and_notes_cited_by_slide_number() -> None:
    data = sample_files.pptx(
        [
            ("Quarterly results", "Revenue rose by a fifth in the north", "Mention the new warehouse"),
            ("Hiring", "Three engineers join in March", ""),
        ]
    )
    sections = located(parse(data, detect_kind("deck.pptx", None)))
    assert list(sections) == ["slide 1", "slide 2"]
    assert "Quarterly results" in sections["slide 1"] and "Revenue rose" in sections["slide 1"]
    assert "Notes: Mention the new warehouse" in sections["slide 1"]
    assert "Three engineers join in March" in sections["slide 2"] and "Notes" not in sections["slide 2"]


def test_an_odt_reads_its_headings_paragraphs_and_table_rows() -> None:
    data = sample_files.odt(["The council approved  the bridge.", "Work starts in May."], [["Cost", "4 million"]])
    (section,) = parse(data, detect_kind("minutes.odt", None))
    assert section.text == "Minutes\nThe council approved  the bridge.\nWork starts in May.\nCost | 4 million"
    with pytest.raises(UnreadableFile, match="not a valid ODT"):
        parse(b"plain", "odt")


def test_sheet_rows_read_on_their_own_cited_by_sheet_and_row_range() -> None:
    sales = [["Region", "Quarter", "Sales"], *[[f"Region {n}", "Q3", 1000 + n] for n in range(60)]]
    data = sample_files.xlsx({"Sales": sales, "Staff": [["Name", "Team"], ["Ottoline", "Finance"]]})
    sections = parse(data, "xlsx")
    first = sections[0]
    assert first.location is not None and first.location.startswith("sheet Sales, rows 2-")
    assert "Region: Region 0; Quarter: Q3; Sales: 1000" in first.text
    assert len([s for s in sections if str(s.location).startswith("sheet Sales")]) > 1  # large sheets are cut by rows
    last_sales = [s for s in sections if str(s.location).startswith("sheet Sales")][-1]
    assert str(last_sales.location).endswith("-61") and "Region 59" in last_sales.text
    assert located(sections)["sheet Staff, rows 2-2"] == "Name: Ottoline; Team: Finance"


def test_a_formula_without_a_cached_value_reads_as_empty_and_the_rest_of_its_row_stays() -> None:
    data = sample_files.xlsx({"Sums": [["Item", "Cost", "Total"], ["Paper", 12, "=B2*2"]]})
    assert located(parse(data, "xlsx")) == {"sheet Sums, rows 2-2": "Item: Paper; Cost: 12"}


def test_csv_rows_carry_their_header_and_a_huge_field_fails_by_name() -> None:
    data = sample_files.csv_file([["city", "population"], ["Lisbon", "545000"], ["Porto", "232000"]])
    assert located(parse(data, detect_kind("cities.csv", None))) == {
        "rows 2-3": "city: Lisbon; population: 545000\ncity: Porto; population: 232000"
    }
    huge = b"name,notes\nx," + b"a" * 2_000_000 + b"\n"
    with pytest.raises(UnreadableFile, match="CSV field is longer than"):
        parse(huge, "csv")


def test_an_epub_reads_its_chapters_in_order_cited_by_chapter() -> None:
    data = sample_files.epub([("The voyage", "They sailed at dawn."), ("The island", "Parrots everywhere.")])
    sections = parse(data, detect_kind("book.epub", None))
    assert [s.location for s in sections] == ["chapter 1: The voyage", "chapter 2: The island"]
    assert "They sailed at dawn." in sections[0].text and "Parrots everywhere." in sections[1].text


def test_a_mail_gives_its_headers_body_and_attachments_as_files_of_their_kind() -> None:
    attached = [
        ("minutes.pdf", sample_files.pdf(["The board met on Tuesday.", "It approved the budget."]), "application/pdf"),
        ("logo.gif", b"GIF89a not a parser's", "image/gif"),  # no parser: left out, not failed
    ]
    data = sample_files.eml("Board minutes", "Please find the minutes attached.", attached)
    sections = parse(data, detect_kind("note.eml", None))
    head = sections[0]
    assert head.location == "message"
    for expected in ("From: Ada Lovelace", "To: Charles Babbage", "Subject: Board minutes", "minutes attached"):
        assert expected in head.text
    assert [(s.location, s.page) for s in sections[1:]] == [
        ("attachment minutes.pdf", 1),
        ("attachment minutes.pdf", 2),
    ]
    assert "approved the budget" in sections[2].text


def test_an_html_mail_is_read_as_html_and_a_mailbox_as_its_messages() -> None:
    html = parse(sample_files.eml("Menu", "Soup <b>of the day</b>", html=True), "eml")
    assert "Soup of the day" in html[0].text.replace("\n", " ") and "<b>" not in html[0].text
    box = sample_files.mbox(
        [sample_files.eml("First", "From the harbour, with love."), sample_files.eml("Second", "Ships at anchor.")]
    )
    sections = parse(box, detect_kind("archive.mbox", None))
    assert [s.location for s in sections] == ["message 1", "message 2"]
    assert "From the harbour, with love." in sections[0].text  # a body line starting with "From " kept whole
    assert "Ships at anchor." in sections[1].text


def test_a_mail_nested_too_deep_fails_by_name() -> None:
    assert parse(sample_files.nested_eml(3), "eml")[-1].text.endswith("the bottom")
    with pytest.raises(UnreadableFile, match=r"more than 10 deep|nested too deep"):
        parse(sample_files.nested_eml(1000), "eml")


@pytest.mark.parametrize("kind", ["pptx", "xlsx", "epub", "odt"])
def test_a_zip_bomb_in_a_zipped_format_fails_by_name_before_inflating(kind: str) -> None:
    bomb = sample_files.docx_bomb(300_000_000)  # a zip whose one member inflates 1,000:1
    with pytest.raises(UnreadableFile, match=r"inflates to|zip bomb"):
        parse(bomb, kind)  # type: ignore[arg-type]
    with pytest.raises(UnreadableFile, match=f"not a valid {kind.upper()}"):
        parse(b"plain bytes", kind)  # type: ignore[arg-type]


def test_unknown_types_are_still_refused() -> None:
    with pytest.raises(UnsupportedFileType):
        detect_kind("movie.mkv", "video/x-matroska")


@needs_ocr
def test_a_scanned_pdf_page_is_read_by_ocr_with_its_page() -> None:
    data = sample_files.scanned_pdf(["The lighthouse keeper feeds his cat sardines every morning."])
    (section,) = parse(data, "pdf")
    assert section.page == 1
    assert "lighthouse keeper feeds his cat sardines" in " ".join(section.text.split())
    with pytest.raises(UnreadableFile, match="no text"):
        parse(data, "pdf", ParseLimits(ocr=False))


@needs_ocr
@pytest.mark.parametrize(("image_format", "name"), [("PNG", "scan.png"), ("JPEG", "scan.jpg")])
def test_an_image_is_read_by_ocr(image_format: str, name: str) -> None:
    data = sample_files.page_image("Invoice number 4471 is due on the first of March.", image_format)
    (section,) = parse(data, detect_kind(name, None))
    assert "Invoice number 4471 is due" in " ".join(section.text.split())


@needs_ocr
def test_a_multipage_tiff_gives_a_page_each_and_limits_fail_by_name() -> None:
    data = sample_files.page_image("Page of a fax about the harbour dues.", "TIFF", pages=2)
    sections = parse(data, detect_kind("fax.tiff", None))
    assert [s.page for s in sections] == [1, 2] and all("harbour dues" in s.text for s in sections)
    with pytest.raises(UnreadableFile, match="OCR_MAX_PIXELS"):
        parse(data, "image", ParseLimits(ocr_max_pixels=1_000_000))
    with pytest.raises(UnreadableFile, match="OCR_TIMEOUT_SECONDS"):
        parse(data, "image", ParseLimits(ocr_timeout_seconds=0.01))
    with pytest.raises(UnreadableFile, match="OCR=false"):
        parse(data, "image", ParseLimits(ocr=False))
    with pytest.raises(UnreadableFile, match="not an image"):
        parse(b"\x89PNG but not really", "image")


def test_citations_of_slides_and_sheets_reach_the_search_results(client: httpx.Client) -> None:
    tag = f"zx{int(time.time() * 1000) % 100000}"
    files = [
        ("plan.pptx", sample_files.pptx([("Intro", "Welcome", ""), (f"{tag} launch", "Rockets fly Friday", "")]), ""),
        ("budget.xlsx", sample_files.xlsx({"Costs": [["Item", "Amount"], [f"{tag} fuel", 900]]}), ""),
    ]
    job = wait_for(client, upload(client, files).json()["id"])
    assert job["state"] == "done", job
    hits: list[dict[str, Any]] = client.get(
        "/api/v1/documents/search", params={"query": f"{tag} launch fuel", "top_k": 10, "mode": "keyword"}
    ).json()["results"]
    locations = {(hit["metadata"]["filename"], hit["metadata"].get("location")) for hit in hits}
    assert ("plan.pptx", "slide 2") in locations
    assert ("budget.xlsx", "sheet Costs, rows 2-2") in locations


def test_hostile_variants_fail_by_name_in_their_job_and_the_good_file_is_stored(client: httpx.Client) -> None:
    """Through the service's parser processes: each hostile file fails alone, its error naming why."""
    tag = f"qv{int(time.time() * 1000) % 100000}"
    files = [
        ("bomb.pptx", sample_files.docx_bomb(300_000_000), ""),
        ("wide.csv", b"name,notes\nx," + b"a" * 20_000_000 + b"\n", "text/csv"),
        ("deep.eml", sample_files.nested_eml(1000), ""),
        ("good.csv", sample_files.csv_file([["word", "meaning"], [tag, "a good row"]]), "text/csv"),
    ]
    job = wait_for(client, upload(client, files).json()["id"])
    errors = {item["name"]: item["error"] for item in job["files"]}
    assert "inflates to" in errors["bomb.pptx"] or "zip bomb" in errors["bomb.pptx"]
    assert "CSV field is longer than" in errors["wide.csv"]
    assert "deep" in errors["deep.eml"]
    assert errors["good.csv"] is None
    hits = client.get("/api/v1/documents/search", params={"query": tag, "mode": "keyword"}).json()["results"]
    assert [hit["metadata"]["location"] for hit in hits] == ["rows 2-2"]


@needs_ocr
def test_retrieval_finds_a_fact_that_lives_only_in_notes_a_row_a_scan_or_an_attachment(client: httpx.Client) -> None:
    """Each fact is in one place only, in a file of its kind; a question in plain words finds it through the API
    (the default hybrid search), with the place cited."""
    files = [
        (
            "review.pptx",
            sample_files.pptx([("Quarter review", "Sales were steady", "The ferry captain Ignatius retires in June")]),
            "",
        ),
        (
            "bakery.xlsx",
            sample_files.xlsx({"Loaves": [["Bakery", "Loaves baked"], ["Quillfeather Lane", 4242], ["Elm Row", 10]]}),
            "",
        ),
        ("scan.pdf", sample_files.scanned_pdf(["The vault combination was changed by Marguerite Okonkwo."]), ""),
        (
            "note.eml",
            sample_files.eml(
                "Papers",
                "See the attachment.",
                [
                    (
                        "annex.pdf",
                        sample_files.pdf(["The observatory telescope mirror is 3.8 metres wide."]),
                        "application/pdf",
                    )
                ],
            ),
            "",
        ),
    ]
    job = wait_for(client, upload(client, files).json()["id"])
    assert job["state"] == "done" and job["errors"] == [], job
    questions = {
        "when does the ferry captain Ignatius retire": ("review.pptx", "slide 1", "retires in June"),
        "how many loaves were baked at Quillfeather Lane": ("bakery.xlsx", "sheet Loaves, rows 2-3", "4242"),
        "who changed the vault combination": ("scan.pdf", None, "Okonkwo"),
        "how wide is the observatory telescope mirror": ("note.eml", "attachment annex.pdf", "3.8 metres"),
    }
    for question, (filename, location, fact) in questions.items():
        hits = client.get("/api/v1/documents/search", params={"query": question, "top_k": 3}).json()["results"]
        found = [hit for hit in hits if hit["metadata"].get("filename") == filename and fact in hit["text"]]
        assert found, (question, [(hit["metadata"].get("filename"), hit["text"][:80]) for hit in hits])
        assert found[0]["metadata"].get("location") == location
