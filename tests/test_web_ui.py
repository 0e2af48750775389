"""The web chat page in a real browser: Debian's Chromium driven headless by Playwright, against the live service."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import PROJECT_DIR
from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import CuttableProxy, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT_DIR / "test-artifacts"
# Without these, Chromium tries to reach Google's services at start, and this machine's network refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="Chromium is not installed (make test installs it)",
)

LAST_ANSWER = ".message.assistant:last-child"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_url: str, upstream: FakeUpstream):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(live_url)
    page.wait_for_function("document.querySelector('#status').textContent.includes('openai')")
    yield page
    context.close()


def answer_state(page) -> str:
    return page.get_attribute(LAST_ANSWER, "data-state")


def answer_text(page) -> str:
    """The last answer as the reader sees it (rendered Markdown ends its last block with a newline)."""
    return page.text_content(f"{LAST_ANSWER} .text").strip()


def ask(page, question: str) -> None:
    page.fill("#question", question)
    page.click("#send")


def test_add_ask_stream_sources_and_stop(page, upstream: FakeUpstream) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.fill("#doc-title", "lighthouse.txt")
    page.fill(
        "#doc-text", "Keeper Ezekiel Thornbury of the Skerry lighthouse feeds his cat Marmalade anchovies at seven."
    )
    page.click("#add-text")
    page.wait_for_function("document.querySelector('#add-result').textContent.startsWith('Added 1 document')")

    tokens = [f"word{i} " for i in range(25)]
    upstream.reset(Script(tokens=tokens, delay=0.12))
    ask(page, "What does Ezekiel Thornbury feed his cat Marmalade?")
    # Tokens arrive while the answer is still being generated.
    page.wait_for_function(
        f"(() => {{ const m = document.querySelector('{LAST_ANSWER}');"
        " return m && m.dataset.state === 'streaming' && m.querySelector('.text').textContent.length > 0; })()"
    )
    partial = page.text_content(f"{LAST_ANSWER} .text")
    assert partial.startswith("word0")
    assert partial != "".join(tokens)
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    assert page.get_attribute(LAST_ANSWER, "data-raw") == "".join(tokens)
    assert page.text_content(f"{LAST_ANSWER} .text p").strip() == "".join(tokens).strip()  # one Markdown paragraph

    # The sources are shown under the answer, expandable, with score and metadata.
    summary = page.locator(f"{LAST_ANSWER} .sources > summary")
    assert summary.text_content().startswith("Sources (")
    summary.click()
    # Other tests share this server's store: find our document among the sources.
    source = page.locator(f"{LAST_ANSWER} .sources li", has_text="lighthouse.txt")
    assert "score 0." in source.text_content()
    source.locator("summary").click()
    assert "anchovies" in source.locator(".snippet").text_content()
    assert '"title": "lighthouse.txt"' in source.locator(".metadata").text_content()
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)

    # Stop on a slow answer: the request is aborted and the service stops the upstream.
    upstream.reset(Script(tokens=["x"] * 300, delay=0.05))
    ask(page, "Tell me everything.")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER} .text').textContent.length > 0")
    page.click("#stop")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'stopped'")
    assert upstream.wait_disconnect(5)
    assert upstream.completed == 0
    assert page.is_enabled("#send")


def test_the_page_shows_its_user_their_own_usage(page, upstream: FakeUpstream) -> None:
    page.wait_for_function("document.querySelector('#usage').textContent === 'No answers yet this month.'")
    upstream.reset(Script(tokens=["a ", "b ", "c"]))
    ask(page, "Anything on file?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    # the fake upstream reports 7 prompt tokens and one per token it sent; counts are written within a second
    page.wait_for_function(
        "document.querySelector('#usage').textContent === 'This month: 1 answer, 10 tokens.'", timeout=15_000
    )


def test_reasoning_is_collapsible(page, upstream: FakeUpstream) -> None:
    upstream.reset(Script(reasoning=["First I check ", "the documents."], tokens=["Answer."]))
    ask(page, "Why?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    reasoning = page.locator(f"{LAST_ANSWER} details.reasoning")
    assert reasoning.get_attribute("open") is None  # collapsed until asked for
    reasoning.locator("summary").click()
    assert reasoning.locator(".body").text_content() == "First I check the documents."
    assert answer_text(page) == "Answer."


def test_conversation_is_kept_per_chat(page, upstream: FakeUpstream, live_url: str) -> None:
    ask(page, "Remember the word banana.")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    page.reload()
    page.wait_for_selector(".message.user")
    assert page.text_content(".message.user") == "Remember the word banana."
    # The page lists the chats after it has shown the open one's messages (a second request): wait for the list.
    page.wait_for_selector("#chat-list li", timeout=10_000)
    assert page.locator('#chat-list button[aria-current="true"]').count() == 1  # the open chat, marked
    page.click("#new-chat")
    assert page.locator(".message").count() == 0


def test_thumbs_rate_an_answer_and_stay_after_a_reload(page, upstream: FakeUpstream, live_url: str) -> None:
    upstream.reset(Script(tokens=["Herons ", "nest ", "in ", "trees."]))
    ask(page, "Where do herons nest?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    page.click(f"{LAST_ANSWER} .thumb[data-rating='down']")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.rating === 'down'")
    page.fill(f"{LAST_ANSWER} .rating-comment input", "No season given.")
    page.click(f"{LAST_ANSWER} .rating-comment button")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER} .rating-comment').hidden")
    chat_id = page.evaluate("localStorage.getItem('rag.chatId')")
    rated = [
        f for f in httpx.get(f"{live_url}/api/v1/feedback", timeout=30).json()["feedback"] if f["chat_id"] == chat_id
    ]
    assert [(f["rating"], f["comment"], f["question"], f["answer"]) for f in rated] == [
        ("down", "No season given.", "Where do herons nest?", "Herons nest in trees.")
    ]
    page.reload()  # the stored chat shows its answer's rating; changing it replaces the one rating
    page.wait_for_selector(f"{LAST_ANSWER} .thumb[data-rating='down'][aria-pressed='true']")
    page.click(f"{LAST_ANSWER} .thumb[data-rating='up']")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.rating === 'up'")
    rated = [
        f for f in httpx.get(f"{live_url}/api/v1/feedback", timeout=30).json()["feedback"] if f["chat_id"] == chat_id
    ]
    assert [(f["rating"], f["message_index"]) for f in rated] == [("up", 1)]


def test_a_reload_mid_answer_shows_the_whole_answer_as_it_continues(page, upstream: FakeUpstream) -> None:
    tokens = [f"part{i} " for i in range(40)]
    upstream.reset(Script(tokens=tokens, delay=0.08))
    ask(page, "Tell me a long story.")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER} .text').textContent.includes('part3')")
    page.reload()  # the page's connection is gone; the answer goes on on the server
    page.wait_for_selector(LAST_ANSWER)
    assert page.locator(".message.user").last.text_content() == "Tell me a long story."
    # it shows the answer from its beginning, then as it continues, and ends it as done
    assert answer_state(page) == "streaming"
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'", timeout=30_000)
    assert page.get_attribute(LAST_ANSWER, "data-raw") == "".join(tokens)
    assert not upstream.disconnected.is_set() and upstream.completed == 1
    # once it ended, a reload shows the stored turn, with nothing to continue
    page.reload()
    page.wait_for_selector(LAST_ANSWER)
    assert answer_text(page) == "".join(tokens).strip()
    assert page.locator(".message.assistant").count() == page.locator(".message.user").count()  # nothing twice
    assert answer_state(page) is None  # a stored message, not an answer in progress


def test_dropped_connections_mid_answer_lose_nothing(browser, live_url: str, upstream: FakeUpstream) -> None:
    """The page behind a proxy whose connections are cut twice mid-answer: the first cut ends the page's fetch (it
    continues with an EventSource after the last event it showed), the second the EventSource (the browser
    reconnects by itself, sending Last-Event-ID). The answer shows whole, nothing twice."""
    proxy = CuttableProxy(live_url.removeprefix("http://"))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(proxy.url)
        page.wait_for_function("document.querySelector('#status').textContent.includes('openai')")
        tokens = [f"piece{i} " for i in range(60)]
        upstream.reset(Script(tokens=tokens, delay=0.08))
        ask(page, "Tell me everything, slowly.")
        for mark in ("piece5 ", "piece25 "):
            page.wait_for_function(f"document.querySelector('{LAST_ANSWER} .text').textContent.includes('{mark}')")
            assert proxy.cut() > 0
        page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'", timeout=30_000)
        assert page.get_attribute(LAST_ANSWER, "data-raw") == "".join(tokens)
        assert not upstream.disconnected.is_set() and upstream.completed == 1
        resumes = [r.lower() for r in proxy.sent if r.startswith("GET /api/v1/chats/") and "/stream?" in r]
        assert len(resumes) >= 2  # the page's EventSource, then the browser's own reconnection...
        assert any("\r\nlast-event-id: " in r for r in resumes)  # ...which names the last event it got
    finally:
        context.close()
        proxy.close()


def test_errors_are_shown_clearly(page, upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=500))
    ask(page, "Will this work?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'failed'")
    assert "status 500" in page.text_content("#error")

    upstream.reset(Script(tokens=["half", " an", " answer"], cut_after=2, delay=0.05))
    ask(page, "And this?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'failed'")
    assert answer_text(page) == "half an"
    assert "The answer failed" in page.text_content(f"{LAST_ANSWER} .failure")

    page.route("**/api/v1/chat", lambda route: route.abort())
    ask(page, "Server down?")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'failed'")
    assert "Cannot reach the server" in page.text_content("#error")


def test_search_panel(page, upstream: FakeUpstream) -> None:
    page.set_input_files(
        "#doc-files",
        files=[{"name": "volcano.md", "mimeType": "text/markdown",
                "buffer": b"# Volcanoes\nMount Etna is an active volcano on Sicily."}],
    )  # fmt: skip
    page.wait_for_selector(".upload[data-state='done']")
    page.fill("#search-query", "active volcano in Sicily")
    page.click("#search-form button")
    page.wait_for_selector("#search-results li details")
    assert "volcano.md" in page.text_content("#search-results li")


def test_upload_progress_markdown_answer_citations_copy_and_documents(
    browser, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A fresh service: drop a PDF, a DOCX and an encrypted PDF; watch each file's bar reach 100% (or its error);
    ask; the answer is sanitized Markdown whose [1] opens the cited page; copy it; delete a document."""
    from bench import sample_files

    fake_upstream.reset(
        Script(
            tokens=[
                "The keeper feeds his cat **sardines** every morning [1].",
                "\n\n- fed at <img src=x onerror=\"document.title='pwned'\"> dawn",
                "\n- see `note [1]` and [9]",
            ]
        )
    )
    settings = make_settings(tmp_path, fake_upstream.url, job_batch_chunks=2)  # type: ignore[attr-defined]
    pdf = sample_files.pdf(
        ["Harbour cranes and the quay.", "The Zorbflax lighthouse keeper feeds his cat Quibbleton sardines.", "Tides."]
    )
    docx = sample_files.docx(["Minutes of the Zorbflax harbour board: the treasurer is Ottoline."] * 6)
    with serve(create_app(settings)) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_function("document.body.dataset.markdown === 'on'")
        # Dropped on the drop zone, as a user drags them from a file manager.
        files = [
            {"name": "harbour.pdf", "type": "application/pdf", "data": pdf},
            {"name": "minutes.docx", "type": "", "data": docx},
            {"name": "locked.pdf", "type": "application/pdf", "data": sample_files.encrypted_pdf("x")},
        ]
        dropped = page.evaluate_handle(
            """files => {
                const transfer = new DataTransfer();
                for (const f of files) {
                    const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                    transfer.items.add(new File([bytes], f.name, { type: f.type }));
                }
                return transfer;
            }""",
            [{**f, "data": base64.b64encode(f["data"]).decode()} for f in files],
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
        page.wait_for_function(
            "[...document.querySelectorAll('.upload')].every(r => ['done', 'failed'].includes(r.dataset.state))"
        )
        rows = {r.locator(".name").text_content(): r for r in page.locator(".upload").all()}
        for name in ("harbour.pdf", "minutes.docx"):
            assert rows[name].get_attribute("data-state") == "done"
            assert rows[name].locator("progress").evaluate("bar => bar.value") == 1
            assert rows[name].locator(".state").text_content().startswith("100%")
        assert "encrypted" in rows["locked.pdf"].locator(".state").text_content()
        page.wait_for_function("document.querySelectorAll('#doc-list li').length === 2")

        ask(page, "What does the Zorbflax lighthouse keeper feed Quibbleton?")
        page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
        answer = page.locator(f"{LAST_ANSWER} .text")
        assert answer.locator("strong").text_content() == "sardines"
        assert answer.locator("li").count() == 2
        assert answer.locator("img").count() == 0 and page.title() != "pwned"
        cites = answer.locator("button.cite")
        assert cites.all_text_contents() == ["[1]"]  # not the one in code, not [9] (no such source)
        cites.first.click()
        first = page.locator(f"{LAST_ANSWER} .sources[open] li").first
        assert first.locator("details").get_attribute("open") is not None
        assert first.locator(".label").text_content().strip() == "harbour.pdf, p. 2"
        assert "Quibbleton" in first.locator(".snippet").text_content()

        page.click(f"{LAST_ANSWER} button.copy")
        assert page.evaluate("navigator.clipboard.readText()") == page.get_attribute(LAST_ANSWER, "data-raw")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-upload.png"), full_page=True)

        page.locator("#doc-list li", has_text="minutes.docx").locator("button").click()
        page.wait_for_function("document.querySelectorAll('#doc-list li').length === 1")
        import httpx

        stored = httpx.get(f"{url}/api/v1/documents").json()["documents"]
        assert [d["metadata"]["filename"] for d in stored] == ["harbour.pdf"]
        context.close()


def test_phone_sized_window(browser, live_url: str, upstream: FakeUpstream) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(live_url)
    assert page.is_visible("#toggle-docs")
    assert not page.is_visible("#docs")
    page.click("#toggle-docs")
    assert page.is_visible("#doc-text")
    page.click("#toggle-docs")
    ask(page, "Hello from a phone")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat-phone.png"))
    context.close()


def test_page_asks_for_the_api_key_once(browser, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fake_upstream.reset()
    settings = make_settings(tmp_path, fake_upstream.url, api_keys=["page-key-123"])  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        context = browser.new_context()
        page = context.new_page()
        prompts: list[str] = []

        def answer(dialog) -> None:
            prompts.append(dialog.message)
            dialog.accept("page-key-123")

        page.on("dialog", answer)
        page.goto(url)
        ask(page, "Hello with a key")
        page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
        assert answer_text(page) == "Hello, world!"
        assert prompts == ["This service needs an API key or a user token:"]
        context.close()


def test_page_uses_a_token_handed_in_by_the_embedding_site(
    browser, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`/#token=...`: the page keeps the token, drops it from the address, acts as the token's user, and what it
    retrieves and sends upstream is the token's organisation's only."""
    import json
    import time

    import httpx
    import jwt

    fake_upstream.reset()
    secret = "page-token-secret-0123456789-abcdefghijklmnop"
    settings = make_settings(tmp_path, fake_upstream.url, api_keys=["page-admin-key"], jwt_secret=secret)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        admin = {"Authorization": "Bearer page-admin-key"}
        for org, code in (("orgA", "1111"), ("orgB", "2222")):
            body = {"documents": [f"The harbour gate code is {code}."], "metadatas": [{"orgId": org}]}
            assert httpx.post(f"{url}/api/v1/documents/add", json=body, headers=admin, timeout=60).status_code == 200
        token = jwt.encode({"sub": "dana", "orgId": "orgA", "exp": int(time.time()) + 300}, secret, algorithm="HS256")
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{url}/#token={token}")
        assert "token" not in page.url
        ask(page, "What is the harbour gate code?")
        page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').dataset.state === 'done'")
        assert answer_text(page) == "Hello, world!"
        assert dialogs == []  # the handed-in token was enough: no prompt for a key
        sent = json.dumps(fake_upstream.requests)
        assert "1111" in sent and "2222" not in sent
        chats = httpx.get(f"{url}/api/v1/chats", params={"userId": "dana", "orgId": "orgA"}, headers=admin).json()
        assert len(chats["chats"]) == 1  # the page stored the turn as the token's user
        context.close()


def test_upload_progress_survives_a_restart_of_the_service(
    browser, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM while a dropped file is being embedded: the job is handed back, the next start resumes it, and the
    page, which reconnects to the job's event stream, shows the file reach 100%."""
    from bench.service_process import ServiceProcess

    text = "".join(
        f"Section {i} of the long survey of coastal lighthouses and their keepers. " * 14 for i in range(200)
    )
    settings = {"job_batch_chunks": "8"}
    with ServiceProcess(tmp_path, fake_upstream.url, **settings) as first:  # type: ignore[attr-defined]
        first.wait_ready()
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(first.url)
        page.set_input_files(
            "#doc-files", files=[{"name": "survey.txt", "mimeType": "text/plain", "buffer": text.encode()}]
        )
        page.wait_for_function("document.querySelector('.upload progress')?.value > 0")
        assert first.terminate() in (0, -15)
        # The same port, the same data: the page's retries reach the new process.
        with ServiceProcess(tmp_path, fake_upstream.url, port=str(first.port), **settings) as second:  # type: ignore[attr-defined]
            page.wait_for_function("document.querySelector('.upload').dataset.state === 'done'", timeout=120_000)
            assert page.locator(".upload .state").text_content().startswith("100%")
            assert httpx.get(f"{first.url}/api/v1/documents").json()["total"] == 1
            second.terminate()
        context.close()
