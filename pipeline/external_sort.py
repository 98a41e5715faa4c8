"""Sorting more items than fit in memory: sorted runs spilled to local disk, then merged.

A shard (or a range of dead letters) is sorted before it is written so its bytes do not
depend on worker count or bundle order. With a small --num_shards over a big corpus one
shard can be far larger than a worker's memory; beyond `budget_bytes` of items the items
are sorted in runs, each pickled to a local temp file in chunks, and merged back lazily.
Imports no Beam.
"""

import contextlib
import heapq
import pickle
import shutil
import tempfile
from typing import Callable, Iterable, Iterator, Optional

SORT_BUFFER_BYTES = 64 << 20  # estimated memory of the items sorted before a run spills
# What a small tuple and its fields cost in CPython beyond their packed bytes (a dead-letter
# row packs to ~50 bytes but takes ~250 in memory): keeps the budget honest for small items.
ITEM_OVERHEAD_BYTES = 200
_CHUNK_BYTES = 1 << 20  # about this much of a run is unpickled at a time while merging


class _Spill:
    """A local temp dir holding sorted runs, created on the first spill."""

    def __init__(self):
        self.directory: Optional[str] = None
        self.paths: list = []

    def write_run(self, items: list, size_bytes: int) -> None:
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="s2s-sort-")
        path = f"{self.directory}/run-{len(self.paths):05d}.pickle"
        per_chunk = max(1, len(items) * _CHUNK_BYTES // max(size_bytes, 1))
        with open(path, "wb") as stream:
            for start in range(0, len(items), per_chunk):
                pickle.dump(items[start:start + per_chunk], stream,
                            protocol=pickle.HIGHEST_PROTOCOL)
        self.paths.append(path)

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _read_run(path: str) -> Iterator:
    with open(path, "rb") as stream:
        while True:
            try:
                chunk = pickle.load(stream)
            except EOFError:
                return
            yield from chunk


@contextlib.contextmanager
def sorted_items(batches: Iterable[tuple], *, key: Callable,
                 budget_bytes: int = SORT_BUFFER_BYTES) -> Iterator[Iterator]:
    """All items of `batches` in `key` order, holding about budget_bytes of items at a time.

    Args:
      batches: (items, packed_bytes) pairs, e.g. unpacked shuffle values and their packed
        size; read once, lazily (a Dataflow group is paged in as it is iterated).
      key: sort key of an item.
      budget_bytes: estimated memory (packed bytes + ITEM_OVERHEAD_BYTES per item) sorted
        in memory before a run goes to disk. Input that fits is sorted in memory as before,
        with no disk I/O.
    Yields: an iterator over the sorted items; spill files are removed on exit.
    """
    spill = _Spill()
    try:
        buffer, buffered = [], 0
        for items, size in batches:
            buffer.extend(items)
            buffered += size + ITEM_OVERHEAD_BYTES * len(items)
            if buffered >= budget_bytes:
                buffer.sort(key=key)
                spill.write_run(buffer, buffered)
                buffer, buffered = [], 0
        buffer.sort(key=key)
        if not spill.paths:
            yield iter(buffer)
        else:
            runs = [_read_run(path) for path in spill.paths] + [iter(buffer)]
            yield heapq.merge(*runs, key=key)
    finally:
        spill.remove()
