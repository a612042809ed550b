"""Random access to a compact trace's row groups, over all its parts: a Parquet file's row groups, an Arrow IPC
stream's record batches. A stream has no index (no footer), so opening one reads it once and keeps where each
batch starts; that read decodes only the columns the caller asks for (``columns``: the replay's t_us and json,
0.25 s of the 1.7 s a whole 10M-step stream takes), the others stay compressed until a group is read by
seeking there. A damaged or truncated stream ends at its last whole batch, as columnar.Reader reads it.
Groups of an older table layout are read as this one's (columnar.upgrade)."""

from __future__ import annotations

import pyarrow as pa

from . import columnar as C


class RowGroups:
    """``sizes``: the rows of each group, in file order over the parts; ``read(g, columns)``: one group as a
    RecordBatch. Not for two threads at once: ``reopen()`` gives another thread its own file handles."""

    def __init__(self, readers, _index=None, visit=None, columns=None):
        """``visit(g, batch)``: called with each group's ``columns`` while the groups are found (an IPC
        stream's batches are decoded for it anyway: a stream is then read once)."""
        self.paths = [r.path for r in readers]
        self.kinds = [r.kind for r in readers]
        self.tables = [r.meta["table"] for r in readers]   # each part's table layout (older ones: upgraded)
        self._files: dict[int, object] = {}
        if _index is not None:
            self.where, self.sizes = _index
            return
        self.where: list[tuple[int, object]] = []   # per group: (part, row group number or stream offset)
        self.sizes: list[int] = []
        for p, r in enumerate(readers):
            if r.kind == "parquet":
                md = r._pf.metadata
                for k in range(md.num_row_groups):
                    if md.row_group(k).num_rows:
                        self.where.append((p, k))
                        self.sizes.append(md.row_group(k).num_rows)
                        if visit is not None:
                            visit(len(self.sizes) - 1, self.read(len(self.sizes) - 1, columns))
            else:
                def found(pos, b, p=p):
                    self.where.append((p, pos))
                    self.sizes.append(b.num_rows)
                    if visit is not None:
                        visit(len(self.sizes) - 1, b)
                index, damage = _stream_index(r.path, found, columns)
                if damage:   # said by the trace's warnings, as a read through columnar.Reader says it
                    r.damage, r.rows = damage, sum(rows for _, rows in index)

    def reopen(self) -> "RowGroups":
        return RowGroups([_Named(*a) for a in zip(self.paths, self.kinds, self.tables)], (self.where, self.sizes))

    def _file(self, p: int):
        f = self._files.get(p)
        if f is None:
            if self.kinds[p] == "parquet":
                import pyarrow.parquet as pq
                f = pq.ParquetFile(self.paths[p])
            else:
                src = pa.memory_map(self.paths[p])
                f = (src, pa.ipc.open_stream(src).schema)
            self._files[p] = f
        return f

    def read(self, g: int, columns: list[str] | None = None) -> pa.RecordBatch:
        p, at = self.where[g]
        f = self._file(p)
        old = self.tables[p] < C.TABLE_VERSION
        if self.kinds[p] == "parquet":
            if old and columns is not None:
                columns = [c for c in columns if c in f.schema_arrow.names]
            t = f.read_row_group(at, columns=columns).combine_chunks()
            bs = t.to_batches()
            b = bs[0] if bs else pa.RecordBatch.from_pylist([], schema=t.schema)
        else:
            src, schema = f
            src.seek(at)
            b = pa.ipc.read_record_batch(pa.ipc.read_message(src), schema)
        if old:
            b = C.upgrade(b, self.tables[p])
        return b if columns is None else b.select(columns)


class _Named:
    def __init__(self, path: str, kind: str, table: int):
        self.path, self.kind, self.meta = path, kind, {"table": table}


def _stream_index(path: str, found=None, columns=None) -> tuple[list[tuple[int, int]], str | None]:
    """(offset, rows) of each non-empty record batch of an IPC stream, up to its last whole one (``found(offset,
    batch)`` with each, decoding only ``columns``, all if None); and what stopped it short, if anything
    (columnar.Reader's phrase)."""
    src = pa.memory_map(path)
    out = []
    damage = None
    try:
        options = None
        if columns is not None:
            names = pa.ipc.open_stream(src).schema.names
            options = pa.ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns])
            src.seek(0)
        reader = pa.ipc.open_stream(src, options=options)
        while True:
            pos = src.tell()   # the stream reader reads one message at a time: where this batch starts
            try:
                b = reader.read_next_batch()
            except StopIteration:
                break
            if b.num_rows:
                out.append((pos, b.num_rows))
                if found is not None:
                    found(pos, b)
    except (pa.ArrowException, OSError, ValueError) as e:   # cut short or damaged: up to the last whole batch
        damage = f"truncated or damaged after byte {src.tell()} ({str(e).splitlines()[0][:60]})"
    return out, damage
