"""Vector segments of the embedded store: immutable `.npy` files, memory-mapped, and the plan for merging them.

A segment is two files written once and never changed: `seg-<name>.npy` (float32 rows, one per chunk) and
`seg-<name>.keys.npy` (each row's chunk key, int64). Rows are grouped by tenant (`orgId`), in ascending key order
within a tenant, so a tenant's rows in a segment are one contiguous slice: its dense search is a product over that
slice, with nothing gathered first. Segments written before the grouping hold their rows in key order; both read
the same way.

Keys only grow, and only adjacent segments are merged, so each segment holds one range of keys and the segments, in
key order, never overlap: a key is found by a binary search over each segment's keys sorted once at open.
The catalog decides which segments exist; a file it does not name is a leftover of a crash and is removed.

A segment of at least `CODES_FILE_ROWS` rows also has `seg-<name>.bits.npy`: each row's binary code
(`quantized.py`), written with it, so a large store's quantized search starts without reading its vectors. A smaller
segment computes its codes from its vectors when a search first needs them (under a millisecond at that size).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.durable import fsync_path
from rag.filters import MISSING, Filters, ValueIndex, filter_mask
from rag.stores.quantized import code_shape, fill_codes
from rag.types import TENANT_KEY

logger = logging.getLogger(__name__)

PREFIX = "seg-"
CODES_FILE_ROWS = 65_536  # a segment this large keeps its binary codes in a file (an add's small one does not)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A temp file beside `path` to write; once the block succeeds it is fsynced and renamed over `path`, and if
    it fails it is removed, so `path` is never half written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save would add ".npy" to a name
        np.save(handle, array, allow_pickle=False)


def segment_files(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{PREFIX}{name}.npy", directory / f"{PREFIX}{name}.keys.npy"


def codes_file(directory: Path, name: str) -> Path:
    return directory / f"{PREFIX}{name}.bits.npy"


def grouped_by_tenant(keys: np.ndarray, tenants: Sequence[Hashable | None] | np.ndarray) -> np.ndarray:
    """The order to write rows in: grouped by tenant (rows without a string tenant form one group), ascending keys
    within each group."""
    codes: dict[str, int] = {}
    group = np.fromiter(
        (codes.setdefault(t, len(codes)) if isinstance(t, str) else -1 for t in tenants), np.int64, len(tenants)
    )
    return np.lexsort((keys, group))


def write_segment(directory: Path, vectors: np.ndarray, keys: np.ndarray) -> str:
    """Write a new segment's two files durably (files and directory fsynced), rows as given; returns its name."""
    return write_merged_segment(directory, [vectors], np.arange(len(keys)), np.ascontiguousarray(keys, dtype=np.int64))


def write_merged_segment(
    directory: Path, sources: Sequence[np.ndarray], rows: np.ndarray, keys: np.ndarray, block: int = 65_536
) -> str:
    """Write one segment whose i-th row is row `rows[i]` of the sources stacked one after another (rows may skip
    and reorder them), with `keys[i]` as its key.

    Rows are copied block by block into a memory-mapped file, so merging segments of a million rows needs no more
    RAM than one block."""
    if rows.shape != keys.shape:
        raise ValueError(f"segment of {rows.shape[0]} rows for {keys.shape[0]} keys")
    name = uuid.uuid4().hex
    vectors_path, keys_path = segment_files(directory, name)
    starts = np.cumsum([0, *(source.shape[0] for source in sources)])
    with _replacing(vectors_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), sources[0].shape[1]))
        for first in range(0, rows.shape[0], block):
            wanted = rows[first : first + block]
            source_of = np.searchsorted(starts, wanted, side="right") - 1
            for s in np.unique(source_of):
                picked = np.flatnonzero(source_of == s)
                local = wanted[picked] - starts[s]
                if picked.shape[0] == wanted.shape[0] and bool(np.all(np.diff(local) == 1)):
                    out[first : first + len(local)] = sources[s][local[0] : local[-1] + 1]  # a run: no gather
                else:
                    out[first + picked] = sources[s][local]
        out.flush()
        if len(keys) >= CODES_FILE_ROWS:
            _write_codes(codes_file(directory, name), out, block)
        del out
    _save_atomic(keys_path, keys)
    fsync_path(directory)
    return name


def _write_codes(path: Path, vectors: np.ndarray, block: int) -> None:
    with _replacing(path) as tmp:
        codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=code_shape(vectors))
        fill_codes(vectors, codes, block)
        codes.flush()
        del codes


def remove_segment(directory: Path, name: str) -> None:
    for path in (*segment_files(directory, name), codes_file(directory, name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def segment_name(path: Path) -> str | None:
    """The segment a file belongs to, or None for a file that is not a segment's."""
    if not path.name.startswith(PREFIX) or not path.name.endswith(".npy"):
        return None
    return path.name[len(PREFIX) :].removesuffix(".npy").removesuffix(".keys").removesuffix(".bits")


ValuesOf = Callable[[str, int, int], Iterable[tuple[int, Any]]]  # (field, first key, last key) -> (key, value)


@dataclass(eq=False)
class Segment:
    """One open segment. Its vectors are a read-only memory map: opening costs nothing, and the pages are the
    kernel's to share between worker processes and to drop under memory pressure."""

    id: int
    name: str
    vectors: np.ndarray
    keys: np.ndarray  # each row's chunk key, in row order
    by_key: np.ndarray  # the rows in ascending key order
    sorted_keys: np.ndarray  # keys[by_key]
    stored_codes: np.ndarray | None = None  # the codes file, memory-mapped, when the segment has one
    missing_codes_file: Path | None = None  # where a segment large enough for one should have it, when it does not
    # metadata field -> value -> local row positions; built on the first filter on that field, kept for the
    # segment's life (a segment never changes, so neither do its indexes)
    _indexes: dict[str, ValueIndex] = field(default_factory=dict)
    _computed_codes: np.ndarray | None = None

    @classmethod
    def open(cls, directory: Path, segment_id: int, name: str) -> Segment:
        vectors_path, keys_path = segment_files(directory, name)
        vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
        keys = np.load(keys_path, allow_pickle=False)
        if vectors.ndim != 2 or keys.shape != (vectors.shape[0],):
            raise ValueError(f"segment {name}: {vectors.shape[0]} vectors but {keys.shape[0]} keys")
        by_key = np.argsort(keys, kind="stable")  # linear on a run per tenant: a merge of sorted runs
        codes_path = codes_file(directory, name)
        codes = np.load(codes_path, mmap_mode="r", allow_pickle=False) if codes_path.exists() else None
        if codes is not None and codes.shape[0] != keys.shape[0]:
            codes = None  # not this segment's (cannot happen short of damage): computed again instead
        missing = codes_path if codes is None and keys.shape[0] >= CODES_FILE_ROWS else None
        return cls(segment_id, name, vectors, keys, by_key, keys[by_key], codes, missing)

    @property
    def rows(self) -> int:
        return int(self.keys.shape[0])

    @property
    def codes(self) -> np.ndarray:
        """Each row's binary code: the codes file's, or computed from the vectors on first use and kept."""
        if self.stored_codes is not None:
            return self.stored_codes
        if self._computed_codes is None:  # two threads may both compute it: the same array, one kept
            self._computed_codes = fill_codes(self.vectors, np.empty(code_shape(self.vectors), dtype=np.uint8))
            if self.missing_codes_file is not None:
                # A large segment written before codes files existed, or whose file was lost: written now (whole
                # or not at all), so the next process reads it instead of every vector. A segment merged away
                # meanwhile leaves it behind as an orphan, which the next start removes.
                try:
                    _save_atomic(self.missing_codes_file, self._computed_codes)
                except OSError:
                    logger.warning("could not write %s; the codes stay in memory", self.missing_codes_file)
        return self._computed_codes

    @property
    def first_key(self) -> int:
        return int(self.sorted_keys[0])

    @property
    def last_key(self) -> int:
        return int(self.sorted_keys[-1])

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Local rows of keys this segment holds (every key must be one of its own)."""
        return self.by_key[np.searchsorted(self.sorted_keys, keys)]

    def value_index(self, key: str, values_of: ValuesOf) -> ValueIndex:
        index = self._indexes.get(key)
        if index is None:
            groups: dict[Hashable, list[int]] = {}
            chunk_keys: list[int] = []
            values: list[Any] = []
            for chunk_key, value in values_of(key, self.first_key, self.last_key):
                chunk_keys.append(chunk_key)
                values.append(value)
            positions = self.rows_of(np.asarray(chunk_keys, dtype=np.int64))
            present = np.zeros(self.rows, dtype=bool)
            for position, value in zip(positions.tolist(), values, strict=True):
                present[position] = True
                with contextlib.suppress(TypeError):  # unhashable: no scalar filter can equal it
                    groups.setdefault(value, []).append(position)
            index = {value: np.asarray(rows, dtype=np.int64) for value, rows in groups.items()}
            index[MISSING] = np.flatnonzero(~present)
            self._indexes[key] = index
        return index

    def tenants(self, values_of: ValuesOf) -> np.ndarray:
        """Each row's tenant (its `orgId` when that is a string, else None), in row order."""
        tenants = np.full(self.rows, None, dtype=object)
        for value, positions in self.value_index(TENANT_KEY, values_of).items():
            if isinstance(value, str):
                tenants[positions] = value
        return tenants

    def mask(self, filters: Filters, values_of: ValuesOf) -> np.ndarray:
        """The rows whose chunk satisfies every filter, as a boolean mask."""
        return filter_mask(filters, lambda key: self.value_index(key, values_of), self.rows)


def plan_merge(live_rows: list[int], dead_rows: list[int]) -> tuple[int, int] | None:
    """Which adjacent segments to merge next, as a [start, stop) range, or None when nothing pays off.

    The rule keeps segment sizes geometric, like a binary counter: starting from the newest segment, an older one
    joins the merge while it holds no more live rows than everything newer in the merge. Every row is rewritten
    about log2(total / add size) times over its life, and a store of a million chunks added 256 at a time has about
    a dozen segments. A segment with more than a quarter of its rows tombstoned is rewritten on its own.
    """
    for i, (live, dead) in enumerate(zip(live_rows, dead_rows, strict=True)):
        if dead and dead * 4 > live + dead:
            return i, i + 1
    if len(live_rows) < 2:
        return None
    start = len(live_rows) - 1
    newer = live_rows[start]
    while start > 0 and live_rows[start - 1] <= newer:
        start -= 1
        newer += live_rows[start]
    return (start, len(live_rows)) if len(live_rows) - start >= 2 else None
