"""The embedded store's compaction, the part that runs outside every lock: choose the next merge of adjacent
segments (`segments.plan_merge`) and write the merged segment without the tombstoned rows, its rows grouped by
tenant again. The store then swaps it in under its write lock (`commit_merge`, from `NumpyVectorStore._merge_once`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.errors import StoreCorrupt
from rag.stores.catalog import Catalog
from rag.stores.segments import (
    Segment,
    ValuesOf,
    grouped_by_tenant,
    plan_merge,
    remove_segment,
    write_merged_segment,
)
from rag.stores.snapshot import Snapshot


@dataclass(frozen=True)
class Merge:
    inputs: tuple[Segment, ...]  # the adjacent segments it replaces
    name: str | None  # the merged segment (None: every row of the inputs was tombstoned)
    keys: np.ndarray  # the merged segment's keys
    dropped: list[int]  # the tombstoned keys it leaves out: their tombstones go with the swap


def write_next_merge(directory: Path, snap: Snapshot, values_of: ValuesOf) -> Merge | None:
    """Write the segment of the next merge the plan asks for over `snap`; None when it asks for none."""
    live = [segment.rows - dead.shape[0] for segment, dead in zip(snap.segments, snap.dead, strict=True)]
    plan = plan_merge(live, [dead.shape[0] for dead in snap.dead])
    if plan is None:
        return None
    inputs = snap.segments[plan[0] : plan[1]]
    kept_rows, kept_keys, tenants, dropped = [], [], [], []
    first_row = 0
    for segment, dead in zip(inputs, snap.dead[plan[0] : plan[1]], strict=True):
        keep = np.ones(segment.rows, dtype=bool)
        keep[dead] = False
        kept = np.flatnonzero(keep)
        kept_rows.append(kept + first_row)
        kept_keys.append(segment.keys[kept])
        tenants.append(segment.tenants(values_of)[kept])
        dropped.append(segment.keys[dead])
        first_row += segment.rows
    keys = np.concatenate(kept_keys)
    order = grouped_by_tenant(keys, np.concatenate(tenants))
    name = None
    if keys.shape[0]:
        sources = [segment.vectors for segment in inputs]
        name = write_merged_segment(directory, sources, np.concatenate(kept_rows)[order], keys[order])
    return Merge(inputs, name, keys, np.concatenate(dropped).tolist())


def commit_merge(directory: Path, catalog: Catalog, merge: Merge) -> None:
    """Swap a written merge in (the caller holds the store's write lock): its inputs leave the catalog and the merged
    segment enters it, with the dropped rows' tombstones, in one transaction; then the inputs' files go."""
    name, keys = merge.name, merge.keys
    try:
        with catalog.transaction() as conn:
            ids = [segment.id for segment in merge.inputs]
            marks = ",".join("?" * len(ids))
            if conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", ids).rowcount != len(ids):
                raise StoreCorrupt("segments being merged vanished from the catalog")
            if name is not None:
                catalog.insert_segment(conn, name, int(keys.min()), int(keys.max()), keys.shape[0])
            conn.executemany("DELETE FROM tombstones WHERE key = ?", ((k,) for k in merge.dropped))
            catalog.bump(conn)
    except BaseException:
        if name is not None:
            remove_segment(directory, name)
        raise
    for segment in merge.inputs:
        remove_segment(directory, segment.name)  # mapped pages stay valid until unmapped
