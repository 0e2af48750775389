"""The keyword index of both stores: a Tantivy index of chunk texts, derived from the store's own records.

Why Tantivy: SQLite FTS5 runs its rank function on every chunk that matches any word of the question, so the
keyword leg cost grew with the corpus (265 ms p50 at 1,000,000 chunks). Tantivy keeps postings in blocks with the
best score each block can reach and skips the blocks that cannot enter the current top k (block-max WAND), so the
same question costs a few milliseconds. Scoring is BM25 (k1 1.2, b 0.75), exact: skipping never changes the top k.

The embedded store (`numpy_store.py`) keeps it beside its catalog; each PostgreSQL replica keeps one on its own disk
and follows the chunk table (`pg_keywords.py`). Either way the index is derived data, rebuilt from the records when
lost, and every hit is checked against the store's snapshot before it is returned.

In the embedded store the catalog stays the commit point, and this index is kept a superset of its live chunks,
which the store's snapshot then filters:
- an add commits here first, before the catalog, so a chunk the catalog holds is always here. A crash in between
  leaves documents under keys the catalog never gave out; the next add first deletes every key from its first one
  up, so they never resurface, and a search never returns them (no snapshot holds their keys);
- a delete or a replacement commits here after the catalog; until then (or after a crash in between) the chunks
  are still here but tombstoned in every snapshot, and filtered out;
- at open, the index is reconciled (those leftovers deleted) and, if its count still differs from the catalog's,
  rebuilt from the catalog. A lost or unreadable index is rebuilt the same way.

One writer at a time: Tantivy allows one per index, and writers of this store already hold its write lock. A
writer is opened per write and handed, once committed, to a thread that lets its merges finish, so an add does not
wait for a merge; the next write waits for that thread (in another process, for the index's own writer lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tantivy

from rag.stores.keyword import query_terms
from rag.types import Chunk, tenant_of

# What the index holds of a chunk: its key in the store, its text, and its organisation (None: no organisation)
Entry = tuple[int, str, str | None]

logger = logging.getLogger(__name__)

ANALYZER = "chunk_text"
WRITER_HEAP = 64_000_000  # bytes; a 256-chunk add needs a fraction, a rebuild flushes a segment per filling
WRITER_WAIT_SECONDS = 120.0  # how long a write waits for another process's writer (its merges) to let go
REBUILD_BATCH = 10_000
META = "meta.json"  # Tantivy's list of the committed segments
MANAGED = ".managed.json"


def _analyzer() -> tantivy.TextAnalyzer:
    """Words split at every non-alphanumeric character, lower-cased, accents folded, English-stemmed: what the
    FTS5 index before it did (`porter unicode61 remove_diacritics 2`), so questions match as they did."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def entries(first_key: int, chunks: Iterable[Chunk]) -> Iterator[Entry]:
    """Index entries for chunks stored under consecutive keys from `first_key`."""
    for offset, chunk in enumerate(chunks):
        yield first_key + offset, chunk.text, tenant_of(chunk.metadata)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("key", indexed=True, fast=True)  # the catalog's chunk key: deleted by, read back
    builder.add_text_field("tenant", tokenizer_name="raw")  # the organisation, one exact term; not scored
    builder.add_text_field("text", tokenizer_name=ANALYZER, index_option="freq")  # BM25 needs no positions
    return builder.build()


def committed_files(directory: Path) -> list[str]:
    """The files an index's last commit is made of: `meta.json`, each of its segments' files (of a segment's
    deletion files, only the one its entry names), and `.managed.json`, Tantivy's list of the files it may delete
    (without it, a copy's segments would never be removed once merged away); older files awaiting Tantivy's
    clean-up are left out."""
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    wanted: dict[str, int | None] = {}
    for segment in meta["segments"]:
        deletes = segment.get("deletes")
        wanted[segment["segment_id"].replace("-", "")] = None if deletes is None else int(deletes["opstamp"])
    names = [META, MANAGED]
    for path in directory.iterdir():
        stem, _, rest = path.name.partition(".")
        if stem not in wanted:
            continue
        if rest.endswith("del") and rest != f"{wanted[stem]}.del":
            continue
        names.append(path.name)
    return names


class KeywordIndex:
    """BM25 top k over chunk texts, optionally within one organisation. Callers serialise writes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._schema = _schema()
        self._analyzer = _analyzer()
        self._index = self._open_or_create()
        self._merging: threading.Thread | None = None  # the last writer, finishing its merges

    def _open_or_create(self) -> tantivy.Index:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            index = tantivy.Index(self._schema, path=str(self.directory), reuse=True)
        except ValueError as exc:  # unreadable (a foreign schema, a damaged meta.json): derived data, start again
            logger.warning("keyword index at %s is unreadable (%s); rebuilt from the catalog", self.directory, exc)
            shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True)
            index = tantivy.Index(self._schema, path=str(self.directory), reuse=True)
        index.register_tokenizer(ANALYZER, self._analyzer)
        index.config_reader(reload_policy="Manual")  # the store reloads when it moves to a newer snapshot
        return index

    # --- reading ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Documents in the index as last reloaded (the live chunks, plus leftovers a snapshot filters out)."""
        return int(self._index.searcher().num_docs)

    def tenant_count(self, org_id: str) -> int:
        """About how many chunks the organisation holds (deleted ones count until a merge drops them): enough to
        choose how to search them."""
        return int(self._index.searcher().doc_freq("tenant", org_id))

    def reload(self) -> None:
        """See what the last commit (of any process) holds."""
        self._index.reload()

    def terms(self, text: str) -> list[str]:
        """The question's searchable words as index terms: stop words dropped, then analysed as chunk text is."""
        found: list[str] = []
        for word in query_terms(text):
            for token in self._analyzer.analyze(word):
                if token not in found:
                    found.append(token)
        return found

    def search(
        self, text: str, limit: int, org_id: str | None = None, only_keys: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """(chunk key, BM25 score) of the best `limit` chunks matching any word of `text`, best first; within
        one organisation's chunks when `org_id` is given, and among `only_keys` alone when given (a reader allowed few
        chunks: matched inside the index, so its top k are all theirs)."""
        terms = self.terms(text)
        if not terms or limit < 1:
            return []
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", term)) for term in terms]
        )
        if org_id is not None:  # the tenant first: it drives the intersection (1.8 against 2.3 ms p50 at 1M)
            tenant = tantivy.Query.const_score_query(tantivy.Query.term_query(self._schema, "tenant", org_id), 0.0)
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, tenant), (tantivy.Occur.Must, query)])
        if only_keys is not None:
            if not only_keys.shape[0]:
                return []
            allowed = tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(self._schema, "key", only_keys.tolist()), 0.0
            )
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, allowed), (tantivy.Occur.Must, query)])
        searcher = self._index.searcher()
        hits = searcher.search(query, limit, count=False).hits
        keys = searcher.fast_field_values("key", [address for _, address in hits])
        # every document has a key (the schema has had the field since the first one was written)
        return [(int(key), float(score)) for key, (score, _) in zip(keys, hits, strict=True) if key is not None]

    # --- writing ----------------------------------------------------------------------------------

    def _writer(self, heap: int = WRITER_HEAP) -> tantivy.IndexWriter:
        if self._merging is not None:
            self._merging.join()
            self._merging = None
        deadline = time.monotonic() + WRITER_WAIT_SECONDS
        while True:
            try:
                return self._index.writer(heap, 1)
            except ValueError as exc:  # LockBusy: another process's writer still holds the index (its merges)
                if "LockBusy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _finish(self, writer: tantivy.IndexWriter) -> None:
        """Let the committed writer's merges finish in the background; the next write waits for them."""
        self._merging = threading.Thread(target=writer.wait_merging_threads, name="keyword-merges", daemon=True)
        self._merging.start()

    @staticmethod
    def _document(entry: Entry) -> tantivy.Document:
        key, text, tenant = entry
        document = tantivy.Document()
        document.add_unsigned("key", key)
        if tenant is not None:
            document.add_text("tenant", tenant)
        document.add_text("text", text)
        return document

    @contextlib.contextmanager
    def _writing(self, heap: int = WRITER_HEAP) -> Iterator[tantivy.IndexWriter]:
        """A writer for one change: committed (durably) when the block succeeds, rolled back when it fails; then
        handed to the merge thread, and the reader reloaded."""
        writer = self._writer(heap)
        try:
            yield writer
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        finally:
            self._finish(writer)
        self._index.reload()

    def add(self, first_key: int, chunks: list[Chunk]) -> None:
        """Index chunks under consecutive keys from `first_key`, durably, before the catalog commits them. Every
        document at or above `first_key` is deleted first: leftovers of an add that crashed before its catalog
        commit, under the very keys now given out again."""
        with self._writing() as writer:
            writer.delete_documents_by_query(self._keys_from(first_key))
            for entry in entries(first_key, chunks):
                writer.add_document(self._document(entry))

    def apply(self, added: list[Entry], removed: Iterable[int]) -> None:
        """Make the index hold `added` and not `removed`, durably; applying the same change twice changes nothing
        (each key is deleted before it is added)."""
        removed = list(removed)
        if not added and not removed:
            return
        with self._writing() as writer:
            self._delete_keys(writer, [*(entry[0] for entry in added), *removed])
            for entry in added:
                writer.add_document(self._document(entry))

    def remove(self, keys: Iterable[int]) -> None:
        """Delete chunks the catalog has already removed (their snapshot tombstones hide them until then)."""
        self.apply([], keys)

    def _delete_keys(self, writer: tantivy.IndexWriter, keys: list[int]) -> None:
        # By a query on the set of keys: a delete by term builds a signed term from a Python int, which matches no
        # unsigned key.
        for start in range(0, len(keys), 10_000):
            part = keys[start : start + 10_000]
            writer.delete_documents_by_query(tantivy.Query.term_set_query(self._schema, "key", part))

    def _keys_from(self, first_key: int) -> tantivy.Query:
        return tantivy.Query.range_query(self._schema, "key", tantivy.FieldType.Unsigned, first_key, None)

    def reconcile(self, live_chunks: int, next_key: int, tombstones: Iterable[int]) -> bool:
        """Delete what the catalog does not hold (keys never given out, tombstoned chunks); True when the index
        then holds exactly as many documents as the catalog's live chunks, False when it must be rebuilt."""
        self.reload()
        if self.count != live_chunks:
            with self._writing() as writer:
                writer.delete_documents_by_query(self._keys_from(next_key))
                self._delete_keys(writer, list(tombstones))
        return self.count == live_chunks

    def rebuild(self, records: Iterable[Entry]) -> int:
        """Replace the whole index with `records`; returns how many were indexed."""
        indexed = 0
        with self._writing(heap=4 * WRITER_HEAP) as writer:
            writer.delete_all_documents()
            for entry in records:
                writer.add_document(self._document(entry))
                indexed += 1
            # The old segments go with this commit; their files (deleted chunks' terms among them) are removed now,
            # not at some later write: a purge relies on it.
            writer.commit()
            writer.garbage_collect_files()
        return indexed

    def link_committed(self, target: Path) -> int:
        """Hard-link the files of the last commit into the empty directory `target`, and return how many
        documents that commit holds: a copy that costs no bytes, taken while no writer of any process runs (a
        merge would replace segments under it). Tantivy never rewrites a committed file in place, so the links
        keep that commit's bytes whatever the index does next."""
        writer = self._writer()  # waits for every other writer and its merges
        try:
            self._index.reload()
            documents = self.count
            for name in committed_files(self.directory):
                (target / name).hardlink_to(self.directory / name)
        finally:
            writer.wait_merging_threads()  # nothing to merge: this lets go of the writer's lock
        return documents

    def close(self) -> None:
        """Wait for the last writer's merges, so that no thread outlives the store."""
        if self._merging is not None:
            self._merging.join()
            self._merging = None
