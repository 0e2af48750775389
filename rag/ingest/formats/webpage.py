"""A crawled web page: its main text, its title and its links (rag/sources/ crawls by them).

A site's pages repeat their menus, headers, footers, sidebars and cookie banners on every page; indexed, those would
match every question about the site and crowd out the pages' own text. So a page's main text is what its `<main>`,
`[role=main]` or `<article>` elements hold when it has them (the markup of most sites made in the last decade), else
its body; and inside that, the elements that are site chrome by their tag, ARIA role, or a class or id word
(`nav`, `menu`, `sidebar`, `cookie`, ...) are dropped. `bench/sources.py` measures what it keeps and drops.
Links are read from the whole page before anything is dropped (a site's menu is how a crawler finds its pages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin

from rag.ingest.parsers import NOT_CONTENT, Section

MAX_LINKS = 5000
MAX_LINK_CHARS = 2048
_MAIN = "main, [role=main]"
_CHROME = (
    "nav, aside, form, dialog, menu, button, [role=navigation], [role=banner], [role=contentinfo], "
    "[role=complementary], [role=search], [role=dialog], [aria-hidden=true], [hidden]"
)
_PAGE_CHROME = "header, footer"  # a page's own, when its main text is the body; an article's header stays
_CHROME_WORDS = frozenset(
    [
        "nav",
        "navbar",
        "navigation",
        "menu",
        "sidebar",
        "breadcrumb",
        "breadcrumbs",
        "cookie",
        "cookies",
        "consent",
        "banner",
        "footer",
        "header",
        "masthead",
        "share",
        "social",
        "skip",
        "pagination",
        "toc",
        "related",
        "newsletter",
        "subscribe",
        "advert",
        "ads",
    ]
)
_WORD = re.compile(r"[a-z]+")


def _is_chrome(node: object) -> bool:
    attributes = node.attributes  # type: ignore[attr-defined]
    names = f"{attributes.get('class') or ''} {attributes.get('id') or ''}".lower()
    return any(word in _CHROME_WORDS for word in _WORD.findall(names))


def _links(tree: object, url: str) -> list[str]:
    base_node = tree.css_first("base[href]")  # type: ignore[attr-defined]
    base = urljoin(url, base_node.attributes.get("href") or "") if base_node is not None else url
    found: dict[str, None] = {}
    for anchor in tree.css("a[href], area[href]"):  # type: ignore[attr-defined]
        href = (anchor.attributes.get("href") or "").strip()
        if not href or len(href) > MAX_LINK_CHARS:
            continue
        link = urldefrag(urljoin(base, href)).url
        if link.startswith(("http://", "https://")):
            found[link] = None
            if len(found) >= MAX_LINKS:
                break
    return list(found)


@dataclass(frozen=True, slots=True)
class WebPage:
    sections: list[Section]  # the title and main text, as one section
    links: list[str]  # absolute http(s) links, without fragments, in page order
    title: str | None


def parse_web_page(markup: str, url: str) -> WebPage:
    """The page's title and main text, and the absolute http(s) links it holds."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup)
    links = _links(tree, url)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else ""
    for node in tree.css(NOT_CONTENT):
        node.decompose()
    roots = tree.css(_MAIN) or tree.css("article")
    if not roots:
        body = tree.body or tree.root
        roots = [] if body is None else [body]
        for node in tree.css(_PAGE_CHROME):
            node.decompose()
    texts = []
    for root in roots:
        for node in root.css(_CHROME):
            node.decompose()
        for node in [n for n in root.css("[class], [id]") if _is_chrome(n)]:
            node.decompose()
        texts.append(root.text(separator="\n", strip=True))
    text = "\n".join(t.strip() for t in texts if t.strip())
    if title and not text.startswith(title):
        text = f"{title}\n{text}"
    return WebPage([Section(text)] if text.strip() else [], links, title or None)
