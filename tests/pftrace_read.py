"""A pftrace (``cgwatch export --format pftrace``) read the way Perfetto's trace processor reads it: packets
decoded with Perfetto's own protos (the ``perfetto`` package), interned names and track descriptors taken in
file order (each must come before its first use), events sorted by (timestamp, file order), SLICE_BEGIN /
SLICE_END matched per track, extra counter values put on their tracks at their event's time."""

from __future__ import annotations

from collections import defaultdict

import pytest  # noqa: I001

P = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

BEGIN, END, INSTANT, COUNTER = 1, 2, 3, 4


def _value(a):
    if a.dict_entries:
        return {e.name: _value(e) for e in a.dict_entries}
    if a.array_values:
        return [_value(e) for e in a.array_values]
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None


def read(data: bytes) -> dict:
    trace = P.Trace()
    trace.ParseFromString(data)
    tracks: dict[int, str] = {}
    counter_tracks: set[int] = set()
    names: dict[int, str] = {}
    arg_names: dict[int, str] = {}
    process = None
    events = []
    for idx, p in enumerate(trace.packet):
        if p.sequence_flags & 1:
            names.clear()
            arg_names.clear()
        if p.HasField("interned_data"):
            names.update((e.iid, e.name) for e in p.interned_data.event_names)
            arg_names.update((e.iid, e.name) for e in p.interned_data.debug_annotation_names)
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            assert d.uuid not in tracks, f"track {d.uuid} described twice"
            tracks[d.uuid] = d.name or d.process.process_name
            if d.HasField("process"):
                process = d.process.process_name
            if d.HasField("counter"):
                counter_tracks.add(d.uuid)
        if not p.HasField("track_event"):
            continue
        te = p.track_event
        assert te.track_uuid in tracks, f"packet {idx}: track {te.track_uuid} used before it is described"
        if te.name_iid:
            assert p.sequence_flags & 2 and te.name_iid in names, f"packet {idx}: name {te.name_iid} not interned"
        args = {}
        for a in te.debug_annotations:
            if a.name_iid:
                assert a.name_iid in arg_names, f"packet {idx}: arg name {a.name_iid} not interned"
            args[arg_names[a.name_iid] if a.name_iid else a.name] = _value(a)
        extra = list(zip(te.extra_counter_track_uuids, te.extra_counter_values)) + \
            list(zip(te.extra_double_counter_track_uuids, te.extra_double_counter_values))
        assert len(te.extra_counter_track_uuids) == len(te.extra_counter_values)
        assert len(te.extra_double_counter_track_uuids) == len(te.extra_double_counter_values)
        for uuid, _ in extra:
            assert uuid in counter_tracks, f"packet {idx}: extra counter on {uuid}, not a counter track"
        value = te.double_counter_value if te.HasField("double_counter_value") else te.counter_value
        events.append((p.timestamp, idx, te.type, te.track_uuid, te.name or names.get(te.name_iid), args, extra,
                       list(te.flow_ids), list(te.terminating_flow_ids), value))
    events.sort(key=lambda e: (e[0], e[1]))
    slices: dict[str, list[dict]] = defaultdict(list)
    counters: dict[str, list[tuple[int, float]]] = defaultdict(list)
    open_: dict[int, list[dict]] = defaultdict(list)
    for ts, _, typ, uuid, name, args, extra, flows, ends, value in events:
        track = tracks[uuid]
        if typ == BEGIN:
            s = {"name": name, "ts": ts, "args": args, "flows": flows, "flow_ends": ends}
            open_[uuid].append(s)
            slices[track].append(s)
        elif typ == END:
            assert open_[uuid], f"an END with no open slice on {track} at {ts}"
            s = open_[uuid].pop()
            s["dur"] = ts - s["ts"]
        elif typ == INSTANT:
            slices[track].append({"name": name, "ts": ts, "dur": 0, "args": args, "instant": True})
        elif typ == COUNTER:
            assert uuid in counter_tracks
            counters[track].append((ts, value))
        for u, v in extra:
            counters[tracks[u]].append((ts, v))
    left = {tracks[u]: len(v) for u, v in open_.items() if v}
    assert not left, f"slices never ended: {left}"
    starts = {f: k for k, s in enumerate(slices.get("host: decode loop", [])) for f in s["flows"]}
    for track in slices.values():   # a flow as the place of the host slice it starts at (ids are the file's)
        for s in track:
            if "flows" in s:
                s["flows"] = [starts[f] for f in s["flows"]]
                s["flow_ends"] = [starts.get(f) for f in s["flow_ends"]]
    info = [s for s in slices.get("events", []) if s["name"] == "export info"]
    assert len(info) == 1, "one export info instant"
    slices["events"].remove(info[0])
    return {"process": process, "tracks": set(tracks.values()), "slices": dict(slices), "counters": dict(counters),
            "info": info[0]}
