"""Access lists in the storage protocol, over every backend (the conformance suite's backends): the rule applied
inside the search on every leg, in lists, fetches and deletes, kept across replacements and changed without
re-embedding, exactly as `Reader.may_read` (the reference rule) says."""

from __future__ import annotations

import random

import pytest

from rag.access import AccessList, Reader
from rag.errors import DocumentNotFound, TenantForbidden
from rag.stores import SearchRequest, VectorStore
from tests import test_store_conformance as conformance
from tests.test_store_conformance import MODES, Backend, chunks_of, documents, unit

backend = conformance.backend  # the conformance suite's fixture: every backend it runs over

HR = AccessList(groups=("hr",))
ALICE = AccessList(users=("alice",))
HENRY_HR = Reader("henry", frozenset({"hr"}))
ERIN_ENG = Reader("erin", frozenset({"eng"}))
ALICE_READER = Reader("alice")


async def seeded(backend: Backend) -> VectorStore:
    """Five documents of orgA, one vector each, all matching the word 'ledger'."""
    store = await backend.open()
    lists = {"hr": HR, "eng": AccessList(groups=("eng",)), "alice": ALICE, "nobody": AccessList(), "open": None}
    for n, (doc, listed) in enumerate(lists.items()):
        chunks = chunks_of(doc, 1, text=f"the {doc} ledger entry", orgId="orgA")
        await store.upsert(chunks, unit(n), "orgA", {doc: listed})
    return store


EXPECTED = {
    None: {"hr", "eng", "alice", "nobody", "open"},
    HENRY_HR: {"hr", "open"},
    ERIN_ENG: {"eng", "open"},
    ALICE_READER: {"alice", "open"},
    Reader("nina"): {"open"},
}


@pytest.mark.parametrize("mode", MODES)
async def test_each_reader_finds_exactly_what_its_lists_grant(backend: Backend, mode: str) -> None:
    store = await seeded(backend)
    for reader, expected in EXPECTED.items():
        request = SearchRequest("ledger entry", unit(0)[0], 10, {"orgId": "orgA"}, None, mode, reader)  # type: ignore[arg-type]
        assert set(documents(await store.search(request))) == expected, (reader, mode)
        total, page = await store.list_documents(0, 100, "orgA", reader)
        assert total == len(expected) and {d.id for d in page} == expected
        for doc in EXPECTED[None]:
            if doc in expected:
                assert (await store.get_document(doc, "orgA", reader)).id == doc
            else:
                with pytest.raises(DocumentNotFound):
                    await store.get_document(doc, "orgA", reader)


async def test_lists_are_shown_changed_without_reembedding_and_seen_by_another_replica(backend: Backend) -> None:
    store = await seeded(backend)
    other = await backend.open()  # another replica (or process) on the same data
    assert (await store.get_document("hr")).access == HR
    assert (await store.get_document("open")).access is None
    await store.set_access("hr", AccessList(groups=("eng",)))
    request = SearchRequest("ledger", None, 10, {"orgId": "orgA"}, None, "keyword", ERIN_ENG)
    assert "hr" in documents(await other.search(request))
    request = SearchRequest("ledger", None, 10, {"orgId": "orgA"}, None, "keyword", HENRY_HR)
    assert "hr" not in documents(await other.search(request))
    await store.set_access("hr", None)  # the whole organisation again
    assert "hr" in documents(await other.search(request))
    with pytest.raises(DocumentNotFound):
        await store.set_access("hr", HR, org_id="orgB")  # another organisation's: not found


async def test_a_replacement_keeps_its_list_unless_given_one(backend: Backend) -> None:
    store = await seeded(backend)
    await store.upsert(chunks_of("hr", 2, text="the hr ledger, second edition", orgId="orgA"), unit(9, 2), "orgA")
    assert (await store.get_document("hr")).access == HR
    request = SearchRequest("second edition", None, 10, {"orgId": "orgA"}, None, "keyword", ERIN_ENG)
    assert await store.search(request) == []
    await store.upsert(chunks_of("hr", 1, text="hr ledger", orgId="orgA"), unit(9), "orgA", {"hr": None})
    assert (await store.get_document("hr")).access is None


async def test_a_reader_cannot_replace_or_delete_what_it_cannot_read(backend: Backend) -> None:
    store = await seeded(backend)
    with pytest.raises(TenantForbidden):
        await store.upsert(chunks_of("hr", 1, text="overwritten", orgId="orgA"), unit(3), "orgA", reader=ERIN_ENG)
    with pytest.raises(DocumentNotFound):
        await store.delete("hr", "orgA", ERIN_ENG)
    assert (await store.get_document("hr")).preview.startswith("the hr ledger")
    assert await store.delete("hr", "orgA", HENRY_HR) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_reader_of_few_documents_still_gets_top_k_of_them(backend: Backend, mode: str) -> None:
    """The filter runs inside the search: 600 chunks, 6 readable, and the reader's top 5 are the 5 best of those
    6 by each leg, never fewer because forbidden chunks filled the top of the list."""
    store = await backend.open()
    rng = random.Random(7)
    readable = set(rng.sample(range(600), 6))
    vectors = unit(11, 600)
    for start in range(0, 600, 100):
        chunks = [c for n in range(start, start + 100) for c in chunks_of(f"d{n}", 1, text=f"report {n}", orgId="o")]
        access = {f"d{n}": (ALICE if n in readable else HR) for n in range(start, start + 100)}
        await store.upsert(chunks, vectors[start : start + 100], "o", access)
    query = vectors[sorted(readable)[0]]
    found = await store.search(SearchRequest("report", query, 5, {"orgId": "o"}, None, mode, ALICE_READER))  # type: ignore[arg-type]
    assert len(found) == 5 and {int(d[1:]) for d in documents(found)} <= readable
    if mode == "dense":  # exact against the readable vectors
        best = sorted(readable, key=lambda n: -float(vectors[n] @ query))[:5]
        assert documents(found) == [f"d{n}" for n in best]


async def test_random_lists_agree_with_the_reference_rule(backend: Backend) -> None:
    store = await backend.open()
    rng = random.Random(3)
    users, groups = ["u1", "u2", "u3"], ["g1", "g2"]
    lists: dict[str, AccessList | None] = {}
    for n in range(40):
        listed = None
        if rng.random() < 0.7:
            listed = AccessList(
                tuple(sorted(set(rng.sample(users, rng.randint(0, 2))))),
                tuple(sorted(set(rng.sample(groups, rng.randint(0, 1))))),
            )
        lists[f"doc{n}"] = listed
        await store.upsert(
            chunks_of(f"doc{n}", 2, text="shared words", orgId="o"), unit(n, 2), "o", {f"doc{n}": listed}
        )
    for user in users:
        for group_set in ([], ["g1"], ["g1", "g2"]):
            reader = Reader(user, frozenset(group_set))
            expected = {doc for doc, listed in lists.items() if reader.may_read(listed)}
            for mode in MODES:
                request = SearchRequest("shared words", unit(99)[0], 100, {"orgId": "o"}, None, mode, reader)  # type: ignore[arg-type]
                assert set(documents(await store.search(request))) == expected, (reader, mode)
            total, page = await store.list_documents(0, 100, "o", reader)
            assert total == len(expected) and {d.id for d in page} == expected


async def test_a_users_documents_and_an_organisations_are_found_and_deleted_together(backend: Backend) -> None:
    store = await backend.open()
    await store.upsert(chunks_of("a1", 2, orgId="o"), unit(1, 2), "o", added_by="ann")
    await store.upsert(chunks_of("a2", 1, orgId="o"), unit(2, 1), "o", {"a2": HR}, added_by="ann")
    await store.upsert(chunks_of("b1", 1, orgId="o"), unit(3, 1), "o", added_by="ben")
    await store.upsert(chunks_of("p1", 1, orgId="p"), unit(4, 1), "p", added_by="ann")
    assert sorted(await store.documents_added_by("ann", "o")) == ["a1", "a2"]
    assert sorted(await store.documents_added_by("ann")) == ["a1", "a2", "p1"]
    assert await store.delete_many(["a1", "a2", "missing"], "o") == 3
    assert await store.document_ids("o") == ["b1"] and store.count == 2
