"""The compact trace format: the same records as JSON Lines, as one Arrow table (docs/TRACE_FORMAT.md,
"Compact format").

One row per record after the header, in file order. Steps, samples and prefills fill typed columns (``t``
as integer µs in ``t_us``; every other number as it was: int32/int64 for integers, float64 for floats,
so nothing is rounded); any other record, and any step/sample/prefill whose fields do not fit the columns
exactly (an unknown field, a string where a number goes, an int ``t``, a ``t`` that is not whole µs, ...),
is kept whole as JSON in the ``json`` column. The tensor-parallel fields have columns since table 2: a step's
``rank_ms`` (list<float64>, null items), ``skew_ms`` and ``plan_us``; a sample's ``gpus`` (list<struct>).
``absent`` says which of the type's fields the record did not have (bit k: the k-th key of its type's key
list), so null and missing stay apart. Decoding a row gives back the same dict (==) as the JSON line it came
from: the round trip is lossless. A file of an older table layout reads as this one (``upgrade``).

The header, the format, the table layout's version and the part number are in the schema metadata
(``cgwatch``: JSON). On disk: an Arrow IPC stream (zstd) while recording and for any name but
``*.parquet``; Parquet (zstd) for ``*.parquet`` once closed. Readers tell them by their first bytes.
"""

from __future__ import annotations

import json
import os
import threading

import pyarrow as pa

from . import records as R

TABLE_VERSION = 2          # the newest table layout this code writes and reads (2: the tensor-parallel columns)
META_KEY = b"cgwatch"
PARQUET_MAGIC = b"PAR1"
IPC_MAGIC = b"\xff\xff\xff\xff"   # an Arrow IPC stream starts with a continuation marker
_I32 = 2 ** 31

# the keys of each columnar record type, in records.py's order (the JSON line's order on the way back)
# (the keys a type gained in a later table layout come last: the bits of ``absent`` keep their meaning)
TP_STEP_KEYS = ("plan_us", "rank_ms", "skew_ms")   # in the order the engine adds them (engine/loop, rank_merge)
STEP_KEYS = ("i", "t", "batch", "rows", "target", "bucket", "mode", "runtime_mode", "reason", "padded", "host_us",
             "gpu_ms", "gap_us", "tokens", "phase", "prompt_tokens") + TP_STEP_KEYS
PREFILL_KEYS = ("t", "i", "requests", "tokens", "host_ms")
SAMPLE_KEYS = ("t",) + R.SAMPLE_NUMBERS + ("gpus",)
KEYS = {R.STEP: STEP_KEYS, R.PREFILL: PREFILL_KEYS, R.SAMPLE: SAMPLE_KEYS}
ADDED = {"plan_us": 2, "rank_ms": 2, "skew_ms": 2, "gpus": 2}   # column -> the table layout that added it

# a sample's ``gpus`` item (measure/sampler.py: the rank, then Nvml.sample()'s fields), exactly these keys
GPU_KEYS = ("gpu", "gpu_util", "mem_util", "mem_used_bytes", "mem_total_bytes", "power_w", "sm_clock_mhz")
GPU_TYPE = pa.struct([pa.field(k, pa.float64() if k == "power_w" else pa.int64()) for k in GPU_KEYS])

# key -> (column, arrow type, kind); kind: "t" (float s <-> int µs), "i32"/"i64" (int), "f" (float), "s" (str),
# "lf" (a list of floats or None), "gpus" (a list of GPU_KEYS dicts)
_INT32 = ("batch", "rows", "target", "bucket", "padded", "tokens", "prompt_tokens", "requests")
_FLOAT = ("host_us", "gpu_ms", "gap_us", "host_ms", "power_w", "cpu_pct", "gpu_busy", "plan_us", "skew_ms")
_STR = ("mode", "runtime_mode", "reason", "phase")
COLUMNS: dict[str, tuple[str, pa.DataType, str]] = {"t": ("t_us", pa.int64(), "t"), "i": ("i", pa.int64(), "i64"),
                                                   "rank_ms": ("rank_ms", pa.list_(pa.float64()), "lf"),
                                                   "gpus": ("gpus", pa.list_(GPU_TYPE), "gpus")}
for _k in dict.fromkeys(STEP_KEYS + PREFILL_KEYS + SAMPLE_KEYS):
    if _k not in COLUMNS:
        COLUMNS[_k] = ((_k, pa.int32(), "i32") if _k in _INT32 else (_k, pa.float64(), "f") if _k in _FLOAT
                       else (_k, pa.string(), "s") if _k in _STR else (_k, pa.int64(), "i64"))

SCHEMA = pa.schema([pa.field("type", pa.string()), *(pa.field(c, typ) for c, typ, _ in COLUMNS.values()),
                    pa.field("absent", pa.int32()), pa.field("json", pa.string())])
NAMES = SCHEMA.names
_KEYSETS = {typ: frozenset(keys) for typ, keys in KEYS.items()}
_LATER = {typ: tuple(k for k in KEYS[typ] if k in ADDED) for typ in (R.STEP, R.SAMPLE)}   # table 2's keys
_NEW_BITS = {typ: sum(1 << b for b, k in enumerate(KEYS[typ]) if k in ADDED) for typ in (R.STEP, R.SAMPLE)}
_GPU_INT = tuple(k != "power_w" for k in GPU_KEYS)
_encode_json = json.JSONEncoder(separators=(",", ":"), default=str).encode
_decode_json = json.JSONDecoder().decode


def metadata(header: dict, part: int = 0) -> dict[bytes, bytes]:
    """The schema metadata of a file: format, versions, part number and the header."""
    meta = {"format": header.get("format", "cgwatch-trace"), "version": header.get("version", 1),
            "table": TABLE_VERSION, "part": part, "header": header}
    return {META_KEY: _encode_json(meta).encode()}


def schema(header: dict, part: int = 0) -> pa.Schema:
    return SCHEMA.with_metadata(metadata(header, part))


def _fits(typ: str, rec: dict) -> int | None:
    """The ``absent`` mask if the record fits its type's columns exactly, else None (then it goes as JSON)."""
    keyset = _KEYSETS.get(typ)
    if keyset is None or len(rec) > len(keyset) + 1:
        return None
    for k in rec:
        if k != "type" and k not in keyset:
            return None
    for k in _LATER.get(typ, ()):   # a later layout's key: the record's keys must be in KEYS order
        if k in rec:
            if not _in_order(typ, rec):
                return None
            break
    mask = 0
    for bit, k in enumerate(KEYS[typ]):
        if k not in rec:
            if k == "t":
                return None
            mask |= 1 << bit
            continue
        v = rec[k]
        if v is None:
            continue
        kind = COLUMNS[k][2]
        tv = type(v)
        if kind == "t":
            if not isinstance(v, float) or not (0.0 <= v < 9e12) or round(v * 1e6) / 1e6 != v:
                return None
        elif kind == "f":
            if not isinstance(v, float):
                return None
        elif kind == "s":
            if tv is not str:
                return None
        elif kind == "lf":
            if tv is not list or any(x is not None and type(x) is not float for x in v):
                return None
        elif kind == "gpus":
            if tv is not list or not all(_gpu_fits(g) for g in v):
                return None
        elif tv is not int or not (-_I32 <= v < _I32 if kind == "i32" else -2 ** 63 <= v < 2 ** 63):
            return None
    return mask


def _in_order(typ: str, rec: dict) -> bool:
    """Whether a record with a later layout's keys has its keys in KEYS order (decoding writes them so: a
    record in another order goes as JSON, so that convert gives the same bytes back)."""
    keys = [k for k in rec if k != "type"]
    return keys == [k for k in KEYS[typ] if k in rec]


def _gpu_fits(g) -> bool:
    """A ``gpus`` item with exactly GPU_KEYS, in order, each an int (int64) or a float (power_w) or None."""
    if type(g) is not dict or tuple(g) != GPU_KEYS:
        return False
    for is_int, v in zip(_GPU_INT, g.values()):
        if v is None:
            continue
        if is_int:
            if type(v) is not int or not -2 ** 63 <= v < 2 ** 63:
                return False
        elif type(v) is not float:
            return False
    return True


def encode(records: list[dict], header: dict | None = None) -> pa.RecordBatch:
    """Records (after the header) -> one batch of the table, in order."""
    n = len(records)
    cols: dict[str, list] = {name: [None] * n for name in NAMES}
    types, absent, js = cols["type"], cols["absent"], cols["json"]
    for row, rec in enumerate(records):
        typ = rec.get("type")
        types[row] = typ if isinstance(typ, str) else None
        mask = _fits(typ, rec)
        if mask is None:
            js[row] = _encode_json(rec)
            continue
        absent[row] = mask
        for k in KEYS[typ]:
            v = rec.get(k)
            if v is not None:
                if k == "t":
                    cols["t_us"][row] = round(v * 1e6)
                else:
                    cols[k][row] = v
    arrays = [pa.array(cols[f.name], type=f.type) for f in SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA if header is None else schema(header))


def later_rows(batch) -> "np.ndarray":
    """Per row: has a value in a column added after table 1 (ADDED: the tensor-parallel fields). The exports
    write these rows through the record path (decoded), as they did when they were JSON rows."""
    import numpy as np
    from . import arrow_np as A
    out = np.zeros(batch.num_rows, dtype=bool)
    for name in ADDED:
        if name in batch.schema.names:
            col = batch.column(name)
            if col.null_count < len(col):
                out |= ~A.null(col)
    return out


def indices(rows) -> pa.Array:
    """An Arrow int64 array of row numbers, built from the numpy buffer (pa.array of Python values makes
    pyarrow import pandas, if installed: 0.25-0.7 s)."""
    import numpy as np
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def decode(batch: pa.RecordBatch | pa.Table) -> list[dict]:
    """A batch back to its records, in order (== the JSON lines it was encoded from)."""
    n = batch.num_rows
    types = batch.column("type").to_pylist()
    js = batch.column("json").to_pylist()
    absent = batch.column("absent").to_pylist()
    out: list[dict | None] = [None] * n
    need: dict[str, list[int]] = {}
    for row in range(n):
        if js[row] is not None:
            out[row] = _decode_json(js[row])
        else:
            need.setdefault(types[row], []).append(row)
    import pyarrow.compute as pc
    for typ, rows in need.items():
        keys = KEYS[typ]
        take = indices(rows)
        values = []
        for k in keys:
            col = pc.take(batch.column(COLUMNS[k][0]), take).to_pylist()
            if k == "t":
                col = [None if v is None else v / 1e6 for v in col]
            values.append(col)
        for pos, row in enumerate(rows):
            mask = absent[row] or 0
            rec = {"type": typ}
            for bit, k in enumerate(keys):
                if not mask >> bit & 1:
                    rec[k] = values[bit][pos]
            out[row] = rec
    return out  # type: ignore[return-value]


def read_meta(schema_: pa.Schema, path: str) -> dict:
    """The metadata of a file's schema; TraceError (one line) if it is not a cgwatch table or too new."""
    from .trace import FORMAT, VERSION, TraceError
    raw = (schema_.metadata or {}).get(META_KEY)
    try:
        meta = _decode_json(raw.decode()) if raw else None
    except ValueError:
        meta = None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("header"), dict)
            or type(meta.get("table")) is not int or type(meta.get("version")) is not int):
        raise TraceError(f"{path} is not a cgwatch trace (no cgwatch table metadata)")
    if meta["version"] > VERSION or meta["table"] > TABLE_VERSION:
        raise TraceError(f"{path}: trace format version {meta['version']} (table {meta['table']}) is newer than "
                         f"this cgwatch reads (version {VERSION}, table {TABLE_VERSION}); upgrade cgwatch")
    missing = [f.name for f in SCHEMA if f.name not in schema_.names and ADDED.get(f.name, 1) <= meta["table"]]
    if missing:
        raise TraceError(f"{path} is not a cgwatch trace (table without columns {', '.join(missing[:3])})")
    return meta


def upgrade(batch: pa.RecordBatch, table: int) -> pa.RecordBatch:
    """A batch of an older table layout as this one reads it: the columns added since (ADDED) as nulls, in
    SCHEMA order, and their bits set in ``absent`` on the rows of their type (those records did not have
    them). Reads ``type`` and ``absent`` when present; any other column passes as it is (dictionary or not)."""
    if table >= TABLE_VERSION:
        return batch
    import numpy as np
    from . import arrow_np as A
    n = batch.num_rows
    names = batch.schema.names
    if "absent" in names and "type" in names and n:
        col = batch.column("absent")
        code = A.codes_in(batch.column("type"), [R.STEP, R.SAMPLE])
        v = A.raw(col, np.int32).copy() if len(col) else np.zeros(0, np.int32)
        v[code == 0] |= _NEW_BITS[R.STEP]
        v[code == 1] |= _NEW_BITS[R.SAMPLE]
        null = A.null(col)
        valid = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
        absent = pa.Array.from_buffers(pa.int32(), n, [valid, pa.py_buffer(v)])
    else:
        absent = None
    arrays, fields = [], []
    for f in SCHEMA:
        if f.name == "absent" and absent is not None:
            arrays.append(absent)
            fields.append(f)
        elif f.name in names:
            arrays.append(batch.column(f.name))
            fields.append(batch.schema.field(f.name))
        elif ADDED.get(f.name, 1) > table:
            arrays.append(pa.nulls(n, f.type))
            fields.append(f)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=batch.schema.metadata))


# ---- files ----

_DICT_READ = ("type",) + _STR   # string columns a reader may take as dictionaries (json: mostly distinct)
FLUSH_INTERVAL_S = 0.25    # the recording's batches reach the file at least this often (a SIGKILL loses < 0.5 s)
COMPACT_ROWS = 1 << 16     # rows per batch / row group once compacted
_IPC_OPTIONS = dict(compression="zstd")


def sniff(path: str) -> str:
    """'parquet', 'ipc' or 'jsonl' by the file's first bytes (an empty file: 'jsonl', whose reader says so)."""
    from .trace import _sniff
    return _sniff(path)


def _parquet_writer(path: str, sch: pa.Schema):
    import pyarrow.parquet as pq
    return pq.ParquetWriter(path, sch, compression="zstd",
                            use_dictionary=[n for n in NAMES if n not in ("i", "t_us")],
                            column_encoding={"i": "DELTA_BINARY_PACKED", "t_us": "DELTA_BINARY_PACKED"})


def write_table(path: str, header: dict, batches, part: int = 0) -> int:
    """Write batches (an iterable of RecordBatch or lists of records) as one closed file: Parquet for
    ``*.parquet``, else an Arrow IPC stream, in COMPACT_ROWS batches; atomically (a temporary file, fsync,
    rename). Returns the rows written."""
    sch = schema(header, part)
    tmp = f"{path}.tmp{os.getpid()}"
    parquet = path.endswith(".parquet")
    rows = 0
    try:
        # the writer closes before its file, an error too (a Parquet writer left open writes to the closed file
        # when it is collected)
        with open(tmp, "wb") as f, (_parquet_writer(f, sch) if parquet else
                                    pa.ipc.new_stream(f, sch, options=pa.ipc.IpcWriteOptions(**_IPC_OPTIONS))) as w:
            pending: list[pa.RecordBatch] = []
            size = 0

            def out() -> None:
                if pending:
                    t = pa.Table.from_batches(pending, schema=SCHEMA).combine_chunks()
                    if parquet:
                        w.write_table(t.replace_schema_metadata(sch.metadata), row_group_size=COMPACT_ROWS)
                    else:
                        for b in t.to_batches(max_chunksize=COMPACT_ROWS):
                            w.write_batch(b)
                    pending.clear()

            for b in batches:
                if isinstance(b, list):
                    b = encode(b)
                b = pa.RecordBatch.from_arrays(b.columns, schema=SCHEMA)
                pending.append(b)
                size += b.num_rows
                rows += b.num_rows
                if size >= COMPACT_ROWS:
                    out()
                    size = 0
            out()
            w.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rows


def _unreadable(e: Exception) -> str:
    """Why pyarrow cannot open a file, short and whole: the first sentence of its message (a Parquet file cut
    short: its footer is missing)."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")
    return "its footer is missing" if "magic bytes not found in footer" in first else first


class Reader:
    """One compact file: ``meta`` (schema metadata: header, part, versions) and ``batches()``, which yields
    record batches up to the last whole one; a damaged or truncated file sets ``damage`` (a phrase for the
    one warning line) and stops there. TraceError for a file that is not a cgwatch table or is too new."""

    def __init__(self, path: str, kind: str | None = None):
        from .trace import TraceError
        self.path = path
        self.kind = kind or sniff(path)
        self.damage: str | None = None
        self.rows = 0
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq
                self._pf = pq.ParquetFile(path)
                sch = self._pf.schema_arrow
            else:
                self._src = pa.memory_map(path)
                self._reader = pa.ipc.open_stream(self._src)
                sch = self._reader.schema
        except (pa.ArrowException, OSError) as e:
            what = "Parquet" if self.kind == "parquet" else "Arrow IPC"
            raise TraceError(f"{path} is not a readable cgwatch trace (damaged or truncated {what} file: "
                             f"{_unreadable(e)})") from None
        self.meta = read_meta(sch, path)
        self.old = self.meta["table"] < TABLE_VERSION   # batches pass through ``upgrade``

    @property
    def header(self) -> dict:
        return self.meta["header"]

    def batches(self, columns: list[str] | None = None, dictionary: bool = False, inert: dict | None = None,
                group=None):
        """``dictionary``: a Parquet file's string columns (not ``json``) as dictionary arrays, as they are
        stored: no string is built (the vectorized readers take their codes). ``inert``: column -> test of a
        Parquet row group's statistics of it (``test(stats, num_values)``, of its first leaf); where it passes,
        the column is not read but comes all null (the caller's promise: it cannot tell them apart).
        ``group(ParquetFile, k)``: whether to read Parquet row group k at all (window.py; default: all)."""
        if self.kind == "parquet":
            pf = self._pf
            if dictionary:
                if getattr(self, "_pf_dict", None) is None:
                    import pyarrow.parquet as pq
                    self._pf_dict = pq.ParquetFile(self.path, metadata=pf.metadata,   # the footer parsed once
                                                   read_dictionary=list(_DICT_READ))
                pf = self._pf_dict
            have = None if columns is None or not self.old else [c for c in columns if c in pf.schema_arrow.names]
            if have is not None and "absent" in have and "type" not in have:
                have.append("type")   # upgrade sets absent's new bits by type
            inert = inert if inert and columns is None and not self.old else None
            fields, nulls = pf.schema_arrow, {}
            for k in range(pf.num_row_groups):
                if group is not None and not group(pf, k):
                    continue
                try:
                    skip = _inert_columns(pf, k, inert) if inert else ()
                    want = (have if self.old else columns) if not skip else [
                        c for c in fields.names if c not in skip]
                    # one thread: decoding a row group's columns in parallel costs more CPU in all
                    t = pf.read_row_group(k, columns=want, use_threads=False)
                except (pa.ArrowException, OSError) as e:
                    self.damage = f"row group {k} of {pf.num_row_groups} is damaged ({str(e).splitlines()[0][:60]})"
                    return
                self.rows += t.num_rows
                for b in t.to_batches():
                    if skip:
                        b = pa.RecordBatch.from_arrays([b.column(f.name) if f.name not in skip else
                                                        _null_array(nulls, f.type, b.num_rows) for f in fields],
                                                       schema=fields)
                    yield self._fit(b, columns)
            return
        if self._reader is None:   # a second pass: the stream again from its start
            self._src = pa.memory_map(self.path)
            self._reader = pa.ipc.open_stream(self._src)
        reader, self._reader = self._reader, None
        while True:
            try:
                b = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError, ValueError) as e:
                self.damage = f"truncated or damaged after byte {self._src.tell()} ({str(e).splitlines()[0][:60]})"
                return
            self.rows += b.num_rows
            yield self._fit(b, columns)

    def _fit(self, b: pa.RecordBatch, columns: list[str] | None) -> pa.RecordBatch:
        """A batch as this layout reads it (``upgrade``), with only ``columns``."""
        if self.old:
            b = upgrade(b, self.meta["table"])
        return b if columns is None else b.select(columns)


def _null_array(cache: dict, typ: pa.DataType, n: int) -> pa.Array:
    """An all-null array, one per type and length (arrays are immutable: shared)."""
    a = cache.get((typ, n))
    if a is None:
        a = cache[(typ, n)] = pa.nulls(n, typ)
    return a


def first_leaf(pf) -> dict[str, int]:
    """A Parquet file's column -> the index of its first leaf column, whose statistics a row group keeps (a
    list of structs has one per field); built once per file."""
    leaf = getattr(pf, "_first_leaf", None)
    if leaf is None:
        leaf = pf._first_leaf = {}
        for j in range(pf.metadata.num_columns):
            leaf.setdefault(pf.metadata.schema.column(j).path.split(".")[0], j)
    return leaf


def _inert_columns(pf, k: int, inert: dict) -> set[str]:
    """The columns of row group ``k`` whose statistics pass their ``inert`` test (Reader.batches)."""
    rg, out = pf.metadata.row_group(k), set()
    leaf = first_leaf(pf)
    for name, test in inert.items():
        if name in leaf:
            cc = rg.column(leaf[name])
            st = cc.statistics
            if st is not None and st.has_null_count and test(st, cc.num_values):
                out.add(name)
    return out


class StreamWriter:
    """The recording side: records are appended to a buffer (the caller's cost: a lock and an append) and a
    background thread encodes them and writes them as one batch of an Arrow IPC stream at least every
    FLUSH_INTERVAL_S, so the file is readable while it is written and a SIGKILL loses less than 0.5 s.
    ``close()`` flushes, then compacts the file in place (``write_table``: Parquet for ``*.parquet``)."""

    def __init__(self, path: str, header: dict, part: int = 0, flush_s: float = FLUSH_INTERVAL_S):
        self.path, self.header, self.part = path, header, part
        self._f = open(path, "wb")
        self._w = pa.ipc.new_stream(self._f, schema(header, part), options=pa.ipc.IpcWriteOptions(**_IPC_OPTIONS))
        self._w.write_batch(encode([]))   # the schema (with the header) reaches the file now, not with the first batch
        self._f.flush()
        self._buf: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.bytes = self._f.tell()
        self._flush_s = flush_s
        self._thread = threading.Thread(target=self._run, name="cgwatch-trace", daemon=True)
        self._thread.start()

    def write(self, rec: dict) -> None:
        with self._lock:
            self._buf.append(rec)

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            buf, self._buf = self._buf, []
        if buf and self.error is None:
            try:
                self._w.write_batch(encode(buf))
                self._f.flush()
                self.bytes = self._f.tell()
            except BaseException as e:   # said by close(); the loop must not die of its trace
                self.error = e

    def close(self, compact: bool = True) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()
        self._w.close()
        self._f.flush()
        try:
            os.fsync(self._f.fileno())
        except OSError:
            pass
        self._f.close()
        if self.error is not None:
            raise self.error
        if compact:
            compact_file(self.path)


def compact_file(path: str) -> None:
    """Rewrite a recorded stream with large batches (Parquet for ``*.parquet``), in place, atomically."""
    r = Reader(path)
    write_table(path, r.header, r.batches(), part=r.meta.get("part", 0))



