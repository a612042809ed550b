"""The live daemon: streams the engine's records to clients over a socket and takes their commands.

``Daemon`` is a sink (``daemon.publish(rec)``, called from the engine and sampler threads). Publishing
never blocks: each client has a bounded queue, and a record that does not fit is dropped and counted
for that client only. Per client, a sender thread drains the queue to the socket and a reader thread
turns command lines into ``engine.submit(Command(...))``; the engine's answer comes back as an ``ack``,
which is never dropped. A client that joins late gets ``hello``, a snapshot (the run's aggregate so far,
``aggregate.RunStats``, and the retained history, kept per record type), then the live stream, with no
gap and no duplicate. Protocol: protocol.py, docs/PROTOCOL.md.
"""

from __future__ import annotations

import errno
import heapq
import hmac
import itertools
import os
import selectors
import socket
import stat
import sys
import threading
import time
from collections import deque
from typing import Callable

import cgwatch
from cgwatch import records as R
from cgwatch.aggregate import VIEW_WINDOW, RunStats
from cgwatch.engine.control import Command, command_from_message, limits_from_header
from cgwatch.errors import CgwatchError
from cgwatch.protocol import (AGGREGATE, AGGREGATE_ROW, DROPPED, HELLO, PROTOCOL_VERSION, SNAPSHOT_BEGIN, SNAPSHOT_END, LineReader,
                              LineTooLong, ProtocolError, decode, encode, format_address, is_loopback,
                              parse_address)
from cgwatch.source import ack

QUEUE_MAX = 10_000        # records waiting for one client; more are dropped (and counted)
# retained history for late joiners, per record type (and per event kind, so that a flood of one kind,
# say marks, pushes out only its own kind); the counts themselves come from the aggregate
KEEP_STEPS = 2_000
KEEP_SAMPLES = 200
KEEP_OTHER = 500          # prefill and unknown types
KEEP_EVENTS = 200         # per event kind, except:
KEEP_EVENT_KIND = {R.EV_STATE: 1, R.EV_CAPTURE: 500, R.EV_ALERT: 500}
AUTH = "auth"             # a client asks whether its token grants control (answered by the daemon)
MAX_ID = 100              # characters of a string id; 32 of a command name echoed in an ack
MAX_INFLIGHT_COMMANDS = 64  # per client: commands sent to the engine and not answered yet
SEND_BATCH = 512          # messages per sendall
DRAIN_S = 1.0             # close(): how long clients get to receive what is queued
MAX_CLIENTS = 32          # at once: each holds two threads and up to QUEUE_MAX records; one more is told so

Submit = Callable[[Command], None]


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/cgwatch/daemon-<pid>.sock``, else ``/tmp/cgwatch-<uid>/daemon-<pid>.sock``
    (the directory is created 0700 and must belong to this user)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "cgwatch") if runtime and os.path.isdir(runtime) else f"/tmp/cgwatch-{os.getuid()}"
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.stat(base)
    except OSError as e:
        raise CgwatchError(f"cannot create socket directory {base}: {e.strerror or e}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise CgwatchError(f"socket directory {base} must belong to you and be private (mode 0700)")
    return os.path.join(base, f"daemon-{os.getpid()}.sock")


def header_record(meta: dict) -> dict:
    """The trace header record for this run's metadata (the same first line TraceWriter writes)."""
    from cgwatch.trace import FORMAT, VERSION
    head = {"type": R.HEADER, "format": FORMAT, "version": VERSION}
    head.update((k, v) for k, v in meta.items() if k not in head)
    return head


class _Client:
    """One connection: its queue (records, acks, dropped notices) and its two threads."""

    def __init__(self, sock: socket.socket, name: str):
        self.sock, self.name = sock, name
        self.queue: deque[dict] = deque()
        self.wake = threading.Event()        # set when the queue got something
        self.dropped = 0                     # records dropped for this client, in total
        self.dropped_told = 0                # the count in the last ``dropped`` message queued
        self.closed = False
        self.inflight = threading.BoundedSemaphore(MAX_INFLIGHT_COMMANDS)
        self.threads: list[threading.Thread] = []
        self.running = 2                     # threads still using the socket; the last one closes it
        self.idle = True                     # the sender is waiting, nothing half sent

    def push(self, msg: dict) -> None:
        """Queue a message that must not be dropped (acks)."""
        self.queue.append(msg)
        self.wake.set()


class Daemon:
    """Listening socket + clients. ``Daemon(listen, token)`` binds at once (bad address -> CgwatchError);
    ``start(header, submit)`` starts accepting. ``publish`` (also ``daemon(rec)``) is the sink."""

    def __init__(self, listen: str | None = None, token: str | None = None, queue_max: int = QUEUE_MAX):
        self.token = token or None
        self.queue_max = queue_max
        self._lock = threading.Lock()        # history, client list, queue bounds
        self._seq = itertools.count()
        self._events: dict[str, deque[tuple[int, dict]]] = {}   # event kind -> its last records
        self._stats = RunStats(window=VIEW_WINDOW)   # the whole run's numbers, for late joiners
        self._steps: deque[tuple[int, dict]] = deque(maxlen=KEEP_STEPS)
        self._samples: deque[tuple[int, dict]] = deque(maxlen=KEEP_SAMPLES)
        self._other: deque[tuple[int, dict]] = deque(maxlen=KEEP_OTHER)
        self._end: dict | None = None
        self._clients: list[_Client] = []
        self._client_ids = itertools.count(1)
        self._header: dict = header_record({})
        self._submit: Submit | None = None
        self._closing = False
        self._unix_path: str | None = None
        self._unix_ino: int | None = None
        self._listener = self._bind(listen or f"unix:{default_socket_path()}")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None

    # -- binding -----------------------------------------------------------------------------
    def _bind(self, listen: str) -> socket.socket:
        kind, host, port = parse_address(listen)
        if kind == "unix":
            return self._bind_unix(host)
        if not is_loopback(host) and not self.token:
            raise CgwatchError(f"--listen {listen} is not loopback: pass --token")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.create_server(sockaddr, family=family, backlog=16)
        except (OSError, UnicodeError) as e:
            raise CgwatchError(f"cannot listen on {listen}: {getattr(e, 'strerror', None) or e}") from None
        host, port = sock.getsockname()[:2]
        self.address = format_address("tcp", host, port)
        return sock

    def _bind_unix(self, path: str) -> socket.socket:
        path = os.path.abspath(path)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise CgwatchError(f"cannot listen on {path}: it exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
                raise CgwatchError(f"another cgwatch daemon is live on {path}")
            except OSError:
                os.unlink(path)   # stale: nobody accepts on it
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise CgwatchError(f"cannot listen on {path}: {e.strerror or e}") from None
        self._unix_path, self._unix_ino = path, os.stat(path).st_ino
        self.address = format_address("unix", path, 0)
        return sock

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, header: dict, submit: Submit | None) -> "Daemon":
        """Begin accepting. ``header``: the run's metadata (Engine.header()) or a header record;
        ``submit``: where commands go (Engine.submit), None for a read-only stream."""
        self._header = header if header.get("type") == R.HEADER else header_record(header)
        self._limits = limits_from_header(self._header)   # commands are checked against them at the door
        self._submit = submit
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="cgwatch-accept", daemon=True)
        self._accept_thread.start()
        return self

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop accepting, give clients up to ``drain_s`` to receive what is queued, close everything,
        remove the socket file. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            clients = list(self._clients)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
        deadline = time.monotonic() + drain_s
        while any((c.queue or not c.idle) and not c.closed for c in clients) and time.monotonic() < deadline:
            time.sleep(0.01)
        for c in clients:
            self._drop_client(c)
        for c in clients:
            for t in c.threads:
                if t is not threading.current_thread():
                    t.join(timeout=1)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()
        if self._unix_path:
            try:   # only our own socket file: a new daemon may have replaced it
                if os.stat(self._unix_path).st_ino == self._unix_ino:
                    os.unlink(self._unix_path)
            except OSError:
                pass

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def client_stats(self) -> list[dict]:
        """Per client: name, queued messages, records dropped."""
        with self._lock:
            return [{"name": c.name, "queued": len(c.queue), "dropped": c.dropped} for c in self._clients]

    # -- the sink ----------------------------------------------------------------------------
    def publish(self, rec: dict) -> None:
        """Queue one record for every client and keep it for late joiners. Never blocks on I/O."""
        with self._lock:
            seq = next(self._seq)
            kind = rec.get("type")
            if kind == R.STEP:
                self._steps.append((seq, rec))
            elif kind == R.SAMPLE:
                self._samples.append((seq, rec))
            elif kind == R.EVENT:
                ev = str(rec.get("kind"))
                kept = self._events.get(ev)
                if kept is None:
                    kept = self._events[ev] = deque(maxlen=KEEP_EVENT_KIND.get(ev, KEEP_EVENTS))
                kept.append((seq, rec))
            elif kind == R.END:
                self._end = rec
            else:
                self._other.append((seq, rec))
            try:
                self._stats.add(rec)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass   # a record the accumulator cannot count (the report and the TUI skip it too)
            limit = self.queue_max
            for c in self._clients:
                q = c.queue
                if len(q) >= limit:
                    c.dropped += 1
                    continue
                if c.dropped != c.dropped_told:   # room again after a gap: say so, at the gap
                    c.dropped_told = c.dropped
                    q.append({"type": DROPPED, "count": c.dropped})
                q.append(rec)
                if not c.wake.is_set():
                    c.wake.set()

    __call__ = publish

    def _snapshot(self) -> list[dict]:
        """hello, snapshot_begin, header, the aggregate (its run fields, then its rows), retained records
        in emit order, snapshot_end (under the lock)."""
        kept = [rec for _, rec in heapq.merge(*self._events.values(), self._steps, self._samples, self._other,
                                              key=lambda sr: sr[0])]
        if self._end is not None:
            kept.append(self._end)
        run, rows = self._stats.state()
        agg = [{"type": AGGREGATE, "window": VIEW_WINDOW, "rows": len(rows), "run": run},
               *({"type": AGGREGATE_ROW, "row": row} for row in rows)]
        return [self._hello(), {"type": SNAPSHOT_BEGIN, "records": len(kept) + len(agg) + 1}, self._header, *agg, *kept,
                {"type": SNAPSHOT_END}]

    def _hello(self) -> dict:
        control = "none" if self._submit is None else "token" if self.token else "open"
        return {"type": HELLO, "protocol": PROTOCOL_VERSION, "cgwatch": cgwatch.__version__, "control": control}

    # -- accepting ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closing:
            for key, _ in self._sel.select():
                if key.fileobj is self._wake_r or self._closing:
                    return
                try:
                    sock, peer = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        time.sleep(0.1)   # out of descriptors: the connection waits in the backlog
                        continue
                    return
                self._add_client(sock, peer)

    def _add_client(self, sock: socket.socket, peer) -> None:
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n = next(self._client_ids)
        c = _Client(sock, format_address("tcp", *peer[:2]) if isinstance(peer, tuple) else f"unix-{n}")
        with self._lock:   # snapshot and registration together: no gap, no duplicate
            busy = len(self._clients) >= MAX_CLIENTS
            if not self._closing and not busy:
                c.queue.extend(self._snapshot())
                self._clients.append(c)
        if self._closing or busy:
            if busy:   # a hello that says why (a client retries later); then closed
                _say_and_close(sock, {**self._hello(), "busy": f"the daemon serves {MAX_CLIENTS} clients at once, "
                                                              "all taken; try again when one leaves"})
            else:
                sock.close()
            return
        c.wake.set()
        c.threads = [threading.Thread(target=self._send_loop, args=(c,), name=f"cgwatch-send-{c.name}", daemon=True),
                     threading.Thread(target=self._read_loop, args=(c,), name=f"cgwatch-read-{c.name}", daemon=True)]
        for t in c.threads:
            t.start()

    def _drop_client(self, c: _Client) -> None:
        with self._lock:
            if c.closed:
                return
            c.closed = True
            if c in self._clients:
                self._clients.remove(c)
        c.wake.set()
        try:
            c.sock.shutdown(socket.SHUT_RDWR)   # wakes a sender blocked in sendall, a reader in recv
        except OSError:
            pass

    def _thread_done(self, c: _Client) -> None:
        self._drop_client(c)
        with self._lock:
            c.running -= 1
            last = c.running == 0
        if last:   # never close a descriptor another thread may still be using
            c.sock.close()

    # -- per-client threads ------------------------------------------------------------------
    def _send_loop(self, c: _Client) -> None:
        q = c.queue
        try:
            while True:
                c.idle = True
                c.wake.wait()
                c.idle = False
                c.wake.clear()
                if c.closed:
                    return
                while q:
                    batch = []
                    while q and len(batch) < SEND_BATCH:
                        batch.append(encode(q.popleft()))
                    c.sock.sendall(b"".join(batch))
                    if c.dropped != c.dropped_told:
                        with self._lock:   # room now: tell about the gap even if no record comes
                            if c.dropped != c.dropped_told and len(q) < self.queue_max:
                                c.dropped_told = c.dropped
                                q.append({"type": DROPPED, "count": c.dropped})
        except OSError:
            pass
        finally:
            self._thread_done(c)

    def _read_loop(self, c: _Client) -> None:
        reader = LineReader(c.sock.recv)
        try:
            while not c.closed:
                while len(c.queue) > self.queue_max and not c.closed:
                    time.sleep(0.01)   # a client that sends but does not read: stop reading it
                try:
                    line = reader.readline()
                except LineTooLong as e:
                    c.push(ack(None, None, False, error=str(e)))
                    continue
                if line is None:
                    return
                if line.strip():
                    try:
                        self._handle(c, line)
                    except OSError:
                        raise
                    except Exception as e:   # never lose the reader (and the client) to one line
                        c.push(ack(None, None, False, error=f"could not handle the line: {type(e).__name__}"))
        except OSError:
            pass
        finally:
            self._thread_done(c)

    def _handle(self, c: _Client, line: bytes) -> None:
        """One command line -> engine.submit, or an error ack."""
        try:
            msg = decode(line)
        except ProtocolError as e:
            c.push(ack(None, None, False, error=str(e)))
            return
        req_id = msg.get("id")
        if not isinstance(req_id, (int, str)) or isinstance(req_id, bool):
            req_id = None
        name = msg.get("cmd") if isinstance(msg.get("cmd"), str) and len(msg["cmd"]) <= 32 else None
        if isinstance(req_id, str) and len(req_id) > MAX_ID:
            c.push(ack(None, name, False, error=f"id of {len(req_id):,} characters: at most {MAX_ID}"))
            return
        if self.token:
            given = msg.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                c.push(ack(req_id, name, False, error="control refused: bad or missing token"))
                return
        if self._submit is None:
            c.push(ack(req_id, name, False, error="this daemon takes no commands"))
            return
        if name == AUTH:   # the token (if any) was good: this connection may control the run
            c.push(ack(req_id, name, True, control="granted"))
            return
        try:
            cmd = command_from_message(msg, self._limits)
        except Exception as e:   # CgwatchError, or anything odd input provokes: the connection goes on
            text = str(e) if isinstance(e, CgwatchError) else f"bad command: {type(e).__name__}"
            c.push(ack(req_id, name, False, error=text if len(text) <= 300 else text[:297] + "..."))
            return
        while not c.inflight.acquire(timeout=0.5):   # bounded commands in flight per client
            if c.closed:
                return

        def reply(result: dict) -> None:
            c.inflight.release()
            c.push(ack(req_id, name, bool(result.get("ok")), **{k: v for k, v in result.items() if k != "ok"}))

        self._submit(Command(cmd.name, cmd.value, reply=reply))


# ---- the daemon process ----

def run_daemon(cfg, listen: str | None, token: str | None, record: str | None, prometheus_port: int | None,
               max_steps: int | None, stop: threading.Event, announce: Callable[[str], None] = print,
               rotate: dict | None = None) -> dict:
    """Run the engine of ``cfg``'s backend (backends.make_engine) in this thread and serve it: a
    session.Session with the Daemon as its view, an optional trace and Prometheus metrics. Announces
    ``cgwatch daemon listening on <addr>`` once clients can connect; returns the engine summary (with
    ``outcome``) when ``stop`` is set, ``max_steps`` ran or the workload ended. The trace gets its end
    record, clients get the ``end`` record."""
    from cgwatch.backends import make_engine
    from cgwatch.session import Session

    daemon = Daemon(listen, token)   # bind first: a bad address fails before the model loads
    with Session.open(lambda emit: make_engine(cfg, emit), record=record, rotate=rotate,
                      prometheus=prometheus_port, daemon=daemon) as session:
        engine = session.engine
        daemon.start(session.header, engine.submit)
        announce(f"cgwatch daemon listening on {daemon.address}")
        if session.metrics is not None:
            announce(f"cgwatch metrics on {session.metrics.url}")
        sys.stdout.flush()
        failure = None
        try:
            session.run(lambda: engine.run(max_steps, stop.is_set), stop)
        except Exception as e:
            failure = e
        summary = session.end()
        if failure is not None:
            # the engine is gone (say, a vLLM restart that failed), but what it recorded is not: clients
            # that are attached or join now still get the whole history, until the daemon is stopped
            announce(f"cgwatch daemon: the run stopped ({type(failure).__name__}); serving its history "
                     f"on {daemon.address} until stopped")
            sys.stdout.flush()
            stop.wait()
            raise failure
        return summary


def _say_and_close(sock: socket.socket, msg: dict) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(encode(msg))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
