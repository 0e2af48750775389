"""The embedded store's compaction, the part that runs outside every lock: choose the next merge of adjacent
segments (`segments.plan_merge`) and write the merged segment without the tombstoned rows, its rows grouped by
tenant again. The store then swaps it in under its write lock (`NumpyVectorStore._merge_once`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.stores.segments import Segment, ValuesOf, grouped_by_tenant, plan_merge, write_merged_segment
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
