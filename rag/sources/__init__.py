"""Web sources kept in sync: a URL (one page, a sitemap, or a site crawled within its host and path) whose pages
become documents, re-synced on a schedule at the cost of what changed (rag/sources/syncer.py), fetched only from
addresses a source may reach (guard.py) and politely (fetcher.py), recorded in a registry every replica shares
(registry.py)."""

from __future__ import annotations
