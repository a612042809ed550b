"""Read the next column batch while this one is worked on: a trace command's batches, one ahead.

pyarrow decodes a Parquet row group or an IPC batch without holding the GIL, so on two cores the decoding of
batch k+1 overlaps the numpy work on batch k (the screen, the fold, the encoding of an export). The
generator given runs in one worker thread, one item ahead; its exceptions come out where the item would.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, TypeVar

T = TypeVar("T")


def ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each computed in a worker thread while the one before is used."""
    with ThreadPoolExecutor(1) as pool:
        coming = pool.submit(next, items, None)
        while (item := coming.result()) is not None:
            coming = pool.submit(next, items, None)
            yield item
