"""Export and import of a knowledge base (`rag/archive/`), over every backend of the conformance suite.

What must hold: a store reads back exactly what it stored; an archive carries documents, chunks, vectors, access
lists and adders from either backend to either, and searches give the same ids and scores after the journey;
importing twice changes nothing; and a bad archive (cut short, altered, another version, another model without
re-embedding) is refused by name before anything is stored.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.plugins.hashing_embedder import HashingEmbedder
from rag.access import AccessList
from rag.archive.exporter import export_archive
from rag.archive.format import MANIFEST
from rag.archive.importer import import_archive
from rag.archive.reader import BadArchive, open_archive
from rag.embedders.simple import SimpleEmbedder
from rag.errors import TenantForbidden
from rag.ingest.indexer import Indexer
from rag.stores import SearchRequest, VectorStore
from rag.stores.base import StoredDocument
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.postgres_store import PostgresVectorStore
from rag.types import Chunk, Embedder
from tests import test_store_conformance as conformance
from tests.test_store_conformance import Backend

backend = conformance.backend

TOPICS = [
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts of leaves.",
    "The mitochondrion makes most of a cell's ATP by oxidative phosphorylation across its inner membrane.",
    "Vaccines train the adaptive immune system with antigens so that memory B and T cells answer a later infection.",
    "Insulin from the pancreas lowers blood glucose by moving glucose transporters to the surface of muscle cells.",
    "Antibiotic resistance spreads when bacteria share plasmids that carry genes for drug-degrading enzymes.",
    "The hippocampus consolidates new memories during sleep, replaying the day's patterns of neural activity.",
    "Tectonic plates drift a few centimetres a year over the mantle, raising mountains where they collide.",
    "A lithium-ion battery stores energy as lithium ions move between a graphite anode and a metal oxide cathode.",
]
QUESTIONS = ["how do plants make sugar", "what makes ATP", "memory cells after vaccination", "battery anode ions"]


def corpus() -> list[tuple[str, str, dict[str, Any], AccessList | None, str | None]]:
    """(id, text, metadata, access list, adder): two organisations, lists and adders of each kind."""
    documents = []
    for n in range(24):
        # a note of its own in each sentence: no two chunks are alike, so no two scores tie
        text = " ".join(f"Note {n}.{i}: {TOPICS[(n + i) % len(TOPICS)]}" for i in range(1 + n % 5))
        access = [None, AccessList(users=("ann",)), AccessList(groups=("eng", "hr")), AccessList()][n % 4]
        org = "acme" if n % 3 else "beta"
        documents.append((f"doc-{n}", text, {"orgId": org, "n": n, "tags": ["x", n]}, access, [None, "ann"][n % 2]))
    return documents


async def seed(store: VectorStore, embedder: Embedder) -> None:
    indexer = Indexer(embedder, store, chunk_size=250, chunk_overlap=40)  # several chunks per document
    for doc_id, text, metadata, access, adder in corpus():
        await indexer.add([text], [metadata], [doc_id], access={doc_id: access}, added_by=adder)


async def held(store: Any, **kwargs: Any) -> dict[str, StoredDocument]:
    found: dict[str, StoredDocument] = {}
    async for batch in store.export_documents(batch_chunks=7, **kwargs):
        found |= {document.id: document for document in batch}
    return found


async def seeded_exports(folder: Path, embedder: Embedder, **archives: str | None) -> dict[str, StoredDocument]:
    """A store seeded with `corpus()` under `folder`, exported to `folder/<name>.tar` for each name=organisation (None:
    every document); returns what it held, in order."""
    source = await NumpyVectorStore.open(folder / "source", embedder.model_name, embedder.dimension)
    try:
        await seed(source, embedder)
        for name, org_id in archives.items():
            await export_archive(
                source, folder / f"{name}.tar", embedder.model_name, embedder.dimension, 250, 40, org_id
            )
        return await held(source)
    finally:
        await source.aclose()


def organisation(documents: dict[str, StoredDocument], org_id: str) -> list[str]:
    return [doc for doc, document in documents.items() if document.chunks[0].metadata["orgId"] == org_id]


async def searches(store: VectorStore, embedder: Embedder) -> list[list[tuple[str, float]]]:
    results = []
    for question in QUESTIONS:
        vector = (await embedder.embed([question]))[0]
        for mode in ("dense", "keyword", "hybrid"):
            request = SearchRequest(question, None if mode == "keyword" else vector, 5, mode=mode)  # type: ignore[arg-type]
            results.append([(hit.chunk.id, hit.score) for hit in await store.search(request)])
    return results


def same_results(left: list[list[tuple[str, float]]], right: list[list[tuple[str, float]]]) -> None:
    """Same chunks in the same order, scores within 1e-5."""
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert [chunk for chunk, _ in a] == [chunk for chunk, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5, rtol=0)


async def test_a_store_reads_back_what_it_stored(backend: Backend, embedder: Embedder) -> None:
    store = await backend.open(embedder.model_name, embedder.dimension)
    await seed(store, embedder)
    everything = await held(store)
    expected = corpus()
    assert list(everything) == [doc_id for doc_id, *_ in expected]  # in the order they were added
    for doc_id, text, metadata, access, adder in expected:
        document = everything[doc_id]
        assert (document.access, document.added_by) == (access, adder)
        assert "".join(chunk.text for chunk in document.chunks).replace(" ", "")[:50] == text.replace(" ", "")[:50]
        assert all(chunk.metadata["orgId"] == metadata["orgId"] for chunk in document.chunks)
        vectors = await embedder.embed_documents([chunk.text for chunk in document.chunks])
        assert np.allclose(document.vectors, vectors, atol=1e-5)
    acme = await held(store, org_id="acme")
    assert set(acme) == {doc_id for doc_id, _, metadata, *_ in expected if metadata["orgId"] == "acme"}
    assert set(await held(store, document_ids=["doc-3", "doc-5", "missing"])) == {"doc-3", "doc-5"}


async def test_an_archive_goes_from_the_embedded_store_to_postgres_and_back_with_the_same_results(
    tmp_path: Path, pg_dsn: str, embedder: Embedder
) -> None:
    first = await NumpyVectorStore.open(tmp_path / "first", embedder.model_name, embedder.dimension)
    postgres = await PostgresVectorStore.open(pg_dsn, embedder.model_name, embedder.dimension, tmp_path / "pgk")
    second = await NumpyVectorStore.open(tmp_path / "second", embedder.model_name, embedder.dimension)
    try:
        await seed(first, embedder)
        manifest = await export_archive(first, tmp_path / "one.tar", embedder.model_name, embedder.dimension, 120, 20)
        assert (manifest.documents, manifest.chunks) == (first.document_count, first.count)
        report = await import_archive(tmp_path / "one.tar", postgres, embedder)
        assert (report.documents, report.chunks, report.unchanged) == (manifest.documents, manifest.chunks, 0)
        await export_archive(postgres, tmp_path / "two.tar", embedder.model_name, embedder.dimension, 120, 20)
        await import_archive(tmp_path / "two.tar", second, embedder)
        original = await searches(first, embedder)
        same_results(original, await searches(second, embedder))
        # PostgreSQL gives the same scores, and the same chunks in dense mode (its HNSW graph is exact at this size);
        # the keyword leg scores words only, so chunks that differ by their numbers tie, and ties break by storage
        # order, which differs between backends
        on_postgres = await searches(postgres, embedder)
        same_results(original[::3], on_postgres[::3])
        for a, b in zip(original, on_postgres, strict=True):
            assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5, rtol=0)
        assert {d: (v.access, v.added_by, len(v.chunks)) for d, v in (await held(second)).items()} == {
            d: (v.access, v.added_by, len(v.chunks)) for d, v in (await held(first)).items()
        }
    finally:
        for store in (first, postgres, second):
            await store.aclose()


async def test_importing_twice_changes_nothing(backend: Backend, embedder: Embedder, tmp_path: Path) -> None:
    await seeded_exports(tmp_path, embedder, kb=None)
    store = await backend.open(embedder.model_name, embedder.dimension)
    stored_so_far: list[int] = []
    first = await import_archive(
        tmp_path / "kb.tar",
        store,
        embedder,
        batch_chunks=10,
        writers=3,
        progress=lambda r: stored_so_far.append(r.documents),
    )  # three adds at once
    assert first.documents == len(corpus()) and first.unchanged == 0
    assert len(stored_so_far) > 1 and stored_so_far == sorted(stored_so_far) and stored_so_far[-1] == len(corpus())
    before = await held(store)
    generation = await _generation(store)
    again = await import_archive(tmp_path / "kb.tar", store, embedder, batch_chunks=10)
    assert (again.documents, again.chunks, again.unchanged) == (0, 0, len(corpus()))
    assert await _generation(store) == generation  # not one write
    after = await held(store)
    assert list(after) == list(before)
    # a changed access list in the store is put back as the archive has it, and nothing else is written
    await store.set_access("doc-1", None)
    third = await import_archive(tmp_path / "kb.tar", store, embedder)
    assert (third.documents, third.unchanged) == (1, len(corpus()) - 1)
    assert (await held(store, document_ids=["doc-1"]))["doc-1"].access == AccessList(users=("ann",))


async def _generation(store: VectorStore) -> int:
    if isinstance(store, NumpyVectorStore):
        return store.catalog.generation()
    assert isinstance(store, PostgresVectorStore)
    async with store._connection() as conn:
        return int(await conn.fetchval("SELECT generation FROM rag_counters WHERE id = 1"))


# --- bad archives ---------------------------------------------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers()}  # type: ignore[union-attr]


def _write(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _with_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def alter(path: Path) -> None:
        members = _members(path)
        manifest = json.loads(members[MANIFEST])
        change(manifest)
        members[MANIFEST] = json.dumps(manifest).encode()
        _write(path, members)

    return alter


def _flip_byte_in(member: str, offset: Callable[[bytes], int]) -> Callable[[Path], None]:
    def alter(path: Path) -> None:
        members = _members(path)
        data = bytearray(members[member])
        data[offset(bytes(data))] ^= 0x01
        members[member] = bytes(data)
        _write(path, members)

    return alter


def _cut(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def alter(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return alter


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _cut_inside_last_member(path: Path) -> None:
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + last.size - 10])


def _drop_last_document(path: Path) -> None:
    """Consistent members (their checksums recomputed), but the counts of the manifest no longer hold."""
    import hashlib

    members = _members(path)
    lines = members["documents.jsonl"].splitlines(keepends=True)
    members["documents.jsonl"] = b"".join(lines[:-1])
    manifest = json.loads(members[MANIFEST])
    for name in ("documents.jsonl",):
        manifest["members"][name] = {"bytes": len(members[name]), "sha256": hashlib.sha256(members[name]).hexdigest()}
    members[MANIFEST] = json.dumps(manifest).encode()
    _write(path, members)


BAD_ARCHIVES: dict[str, tuple[Callable[[Path], None], str]] = {
    "cut in the manifest": (_cut(lambda n: 700), "cut short"),
    "cut in half": (_cut(lambda n: n // 2), "cut short"),
    "cut in the last vector": (_cut_inside_last_member, "cut short"),
    "not a tar": (lambda p: _write_bytes(p, b"PK\x03\x04 a zip, not an archive" * 40), "not a tar archive"),
    "another version": (_with_manifest(lambda m: m.update(version=2)), "format version 2"),
    "another format": (_with_manifest(lambda m: m.update(format="something")), "not an archive of this service"),
    "a chunk's text altered": (
        _flip_byte_in("chunks.jsonl", lambda data: data.index(b'"text":"') + 15),
        "checksum mismatch",
    ),
    "a vector altered": (_flip_byte_in("vectors.f32", lambda data: 1001), "checksum mismatch"),
    "a checksum altered": (
        _with_manifest(lambda m: m["members"]["vectors.f32"].update(sha256="0" * 64)),
        "vectors.f32: checksum mismatch",
    ),
    "a size altered": (_with_manifest(lambda m: m["members"]["chunks.jsonl"].update(bytes=5)), "the manifest says"),
    "a document dropped": (_drop_last_document, "chunks.jsonl or vectors.f32 holds more"),
    # the manifest altered to say another dimension: the vectors no longer match their documents
    "a dimension altered": (_with_manifest(lambda m: m["embedding"].update(dimension=512)), "checksum mismatch"),
    "an extra member": (lambda p: _write(p, _members(p) | {"../../etc/passwd": b"x"}), "an archive holds"),
}


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    import asyncio

    folder = tmp_path_factory.mktemp("archive")
    asyncio.run(seeded_exports(folder, embedder, good=None))
    return folder / "good.tar"


@pytest.mark.parametrize("fault", list(BAD_ARCHIVES))
async def test_a_bad_archive_is_refused_by_name_and_nothing_stored(
    fault: str, good_archive: Path, tmp_path: Path, embedder: Embedder
) -> None:
    alter, message = BAD_ARCHIVES[fault]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(good_archive.read_bytes())
    alter(bad)
    store = await NumpyVectorStore.open(tmp_path / "store", embedder.model_name, embedder.dimension)
    try:
        with pytest.raises(BadArchive, match=message):
            await import_archive(bad, store, embedder, batch_chunks=5)
        assert (store.count, store.document_count, store.catalog.generation()) == (0, 0, 0)
    finally:
        await store.aclose()


async def test_an_archive_of_another_model_needs_reembedding(good_archive: Path, tmp_path: Path) -> None:
    hashing = await SimpleEmbedder.wrap(HashingEmbedder(dimension=64))
    store = await NumpyVectorStore.open(tmp_path / "store", hashing.model_name, hashing.dimension)
    try:
        with pytest.raises(BadArchive, match=r"embedded with 'sentence-transformers/all-MiniLM-L6-v2'.*--reembed"):
            await import_archive(good_archive, store, hashing)
        assert store.count == 0
        report = await import_archive(good_archive, store, hashing, reembed=True)
        assert report.reembedded and report.documents == len(corpus())
        stored = await held(store)
        for document in stored.values():  # the new model's vectors, of the archive's chunks
            expected = await hashing.embed_documents([chunk.text for chunk in document.chunks])
            assert np.allclose(document.vectors, expected, atol=1e-6)
        again = await import_archive(good_archive, store, hashing, reembed=True)
        assert (again.documents, again.unchanged) == (0, len(corpus()))
    finally:
        await store.aclose()


def test_the_good_archive_passes_and_says_what_it_holds(good_archive: Path) -> None:
    manifest = open_archive(good_archive).manifest
    assert manifest.documents == len(corpus()) and manifest.chunks > manifest.documents
    assert (manifest.embedding_model, manifest.dimension) == ("sentence-transformers/all-MiniLM-L6-v2", 384)
    with pytest.raises(BadArchive, match="belongs to organisation 'beta', not 'acme'"):
        open_archive(good_archive, org_id="acme")


async def test_prune_leaves_the_store_holding_exactly_the_archive(
    backend: Backend, embedder: Embedder, tmp_path: Path
) -> None:
    documents = await seeded_exports(tmp_path, embedder, all=None, acme="acme")
    expected, acme = set(documents), organisation(documents, "acme")
    store = await backend.open(embedder.model_name, embedder.dimension)
    await import_archive(tmp_path / "all.tar", store, embedder)
    for org in ("acme", "beta"):  # a document the archive does not hold, in each organisation
        chunk = Chunk(f"stray-{org}:0", f"stray-{org}", f"added after the export in {org}", {"orgId": org})
        await store.upsert([chunk], await embedder.embed_documents([chunk.text]))
    scoped = await import_archive(tmp_path / "acme.tar", store, embedder, org_id="acme", prune=True)
    assert (scoped.documents, scoped.unchanged, scoped.deleted) == (0, len(acme), 1)
    assert set(await held(store)) == expected | {"stray-beta"}  # another organisation's documents are left alone
    everything = await import_archive(tmp_path / "all.tar", store, embedder, prune=True)
    assert everything.deleted == 1
    assert set(await held(store)) == expected


async def test_an_import_meeting_another_organisations_document_stops_with_that_error(
    backend: Backend, embedder: Embedder, tmp_path: Path
) -> None:
    """Several adds in flight: the one refused raises, the others end as they would, and nothing hangs."""
    acme = organisation(await seeded_exports(tmp_path, embedder, acme="acme"), "acme")
    store = await backend.open(embedder.model_name, embedder.dimension)
    taken = list(acme)[-1]  # the archive's last document: every batch before it is stored
    chunk = Chunk(f"{taken}:0", taken, "beta's own document under that id", {"orgId": "beta"})
    await store.upsert([chunk], await embedder.embed_documents([chunk.text]))
    with pytest.raises(TenantForbidden):
        await asyncio.wait_for(
            import_archive(
                tmp_path / "acme.tar", store, embedder, org_id="acme", batch_chunks=6, writers=4, documents_per_add=2
            ),
            120,
        )
    assert (await held(store, document_ids=[taken]))[taken].chunks[0].metadata["orgId"] == "beta"
    stored = set(await held(store, org_id="acme"))
    assert stored and stored <= set(acme) - {taken}
