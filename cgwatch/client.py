"""Clients of the daemon: ``LiveSource`` (what a view reads from, source.py) and ``connect`` (a small
blocking connection for scripts and tests).

Every (re)connection starts with a fresh snapshot: ``snapshot_begin``, then the trace header record,
the retained history, ``snapshot_end``, then live records. A view that sees a ``header`` record should
reset what it built, because the history that follows repeats what it may have seen before.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import deque
from typing import Callable

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.protocol import (DROPPED, HELLO, PROTOCOL_VERSION, LineReader, ProtocolError, decode, encode,
                              open_connection)
from cgwatch.source import ACK, PLAYBACK_COMMANDS, RecordCallback, Source, StatusCallback, ack

CONNECT_TIMEOUT_S = 2.0
RETRY_S = (0.5, 0.5, 0.5, 1.0)   # waits between connection attempts; the last repeats
GONE_WAIT_S = 2.0   # after a lost connection, how long ``gone`` may take to say the daemon died (reaped)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_hello(msg: dict | None) -> str | None:
    """None if ``msg`` is a hello we speak; else what is wrong, in words."""
    if not msg or msg.get("type") != HELLO:
        return "not a cgwatch daemon (no hello)"
    if msg.get("protocol") != PROTOCOL_VERSION:
        return (f"the daemon speaks protocol {msg.get('protocol')!r} (cgwatch {msg.get('cgwatch')}), this cgwatch "
                f"speaks {PROTOCOL_VERSION}: use matching versions")
    return None


AUTH_ID = "cgwatch-auth"   # the id of LiveSource's own ``auth`` command (its ack is not passed on)


class LiveSource(Source):
    """A live run behind a daemon. Records, acks and ``dropped`` notices go to ``on_record`` from a
    background thread (local acks, for commands that never left, from a short-lived thread of their
    own); callbacks never run concurrently. A lost connection is retried forever (``reconnect``),
    also after the run's ``end`` record (a daemon that comes back on the address is a new run: its
    header resets the view), except after a protocol mismatch.

    The status says whether this session may control the run (``read_only``: None, or why not: the
    daemon takes no commands, wants a token, or refused the token, which is checked on connecting).

    ``gone``, for a daemon this process started (``cgwatch run``'s child): why it is gone, in words, or
    None while it runs. Once it says, the source stops reconnecting and its last status (``final``) says
    why, e.g. "the daemon was killed by SIGKILL"."""

    def __init__(self, addr: str, token: str | None = None, reconnect: bool = True,
                 gone: Callable[[], str | None] | None = None):
        self.addr, self.token, self.reconnect, self.gone = addr, token, reconnect, gone
        self.title = f"live {addr}"
        self.connected = False
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._cb_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_record: RecordCallback | None = None
        self._on_status: StatusCallback | None = None
        self._dropped_before = 0   # dropped on earlier connections
        self._dropped_now = 0      # the current connection's count (the daemon counts per connection)
        self._paused = False
        self._control: str | None = None
        self._read_only: str | None = None
        self._end: dict | None = None
        self._busy_said: str | None = None  # the daemon's "no place" status, shown once until a connection gets in

    # -- Source ------------------------------------------------------------------------------
    def start(self, on_record: RecordCallback, on_status: StatusCallback) -> None:
        self._on_record, self._on_status = on_record, on_status
        self._thread = threading.Thread(target=self._run, name="cgwatch-live", daemon=True)
        self._thread.start()

    def send(self, cmd: str, value: object = None) -> int:
        req_id = next(self._ids)
        if cmd in PLAYBACK_COMMANDS:
            self._local_ack(ack(req_id, cmd, False, error="not available on a live run"))
            return req_id
        msg = {"cmd": cmd, "value": value, "id": req_id}
        if self.token:
            msg["token"] = self.token
        with self._send_lock:
            sock = self._sock
            error = None if sock else "not connected"
            if sock:
                try:
                    sock.sendall(encode(msg))
                except OSError as e:
                    error = f"not connected: {_reason(e)}"
        if error:
            self._local_ack(ack(req_id, cmd, False, error=error))
        return req_id

    def close(self) -> None:
        self._stop.set()
        with self._send_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)   # wakes the reader
                except OSError:
                    pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    # -- callbacks ---------------------------------------------------------------------------
    def _deliver(self, msg: dict) -> None:
        if self._on_record is not None:
            with self._cb_lock:
                self._on_record(msg)

    def _local_ack(self, msg: dict) -> None:
        # never on the caller's thread: a view calling send() from its UI thread may not accept
        # callbacks there (Textual's call_from_thread refuses its own thread)
        threading.Thread(target=self._deliver, args=(msg,), name="cgwatch-ack", daemon=True).start()

    def _status(self, connected: bool, text: str, final: bool = False) -> None:
        self.connected = connected
        if self._on_status is not None and not self._stop.is_set():
            with self._cb_lock:
                self._on_status({"connected": connected, "text": text, "final": final,
                                 "dropped": self._dropped_before + self._dropped_now,
                                 "position_s": None, "duration_s": None, "speed": None, "paused": self._paused,
                                 "control": self._control, "read_only": self._read_only})

    # -- the connection thread ---------------------------------------------------------------
    def _gone(self, wait_s: float = 0.0) -> str | None:
        """``gone()``'s answer, asked again for up to ``wait_s`` (a dying process closes its socket a
        moment before its parent can reap it); None without ``gone``."""
        if self.gone is None:
            return None
        deadline = time.monotonic() + wait_s
        while (why := self.gone()) is None and time.monotonic() < deadline and not self._stop.wait(0.05):
            pass
        return why

    def _ended(self, why: str) -> None:
        """The daemon is gone for good: the last status, then no more attempts."""
        run = f"run ended ({self._end.get('outcome', 'no outcome')}); " if self._end is not None else ""
        self._status(False, run + why, final=True)

    def _run(self) -> None:
        attempt, last_text, ended = 0, None, None
        while not self._stop.is_set():
            why = self._gone()
            if why is not None:
                self._ended(why)
                return
            try:
                sock = open_connection(self.addr, CONNECT_TIMEOUT_S)
            except (OSError, CgwatchError) as e:
                final = not self.reconnect or isinstance(e, CgwatchError)
                text = ended or (f"cannot connect to {self.addr}: {_reason(e)}" + ("" if final else "; retrying"))
                if text != last_text:   # one status per kind of failure, not one per attempt
                    self._status(False, text, final)
                    last_text = text
                if final:
                    return
                self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            attempt, last_text, ended = 0, None, None
            final, reason, busy = self._session(sock)
            if self._stop.is_set():
                return
            if final:
                self._status(False, reason, final=True)
                return
            why = self._gone(GONE_WAIT_S)
            if why is not None:
                self._ended(why)
                return
            if self._end is not None:   # the run ended and its daemon closed: wait for the next one
                if not self.reconnect:
                    self._status(False, reason, final=True)
                    return
                ended = last_text = f"{reason}; waiting for a daemon on {self.addr}"
                self._status(False, ended)
                self._stop.wait(RETRY_S[0])
                continue
            if not self.reconnect:
                self._status(False, reason if busy else f"daemon lost: {reason}", final=True)
                return
            if busy:
                if reason != self._busy_said:
                    self._status(False, f"{reason}; retrying")
                    self._busy_said = reason
                self._stop.wait(RETRY_S[-1])
                continue
            self._status(False, f"daemon lost: {reason}; reconnecting")
            last_text = None
            self._stop.wait(RETRY_S[0])

    def _session(self, sock: socket.socket) -> tuple[bool, str, bool]:
        """Read one connection to its end. Returns (final: do not reconnect, reason, busy: the daemon had no
        place for another client)."""
        reader = LineReader(sock.recv)
        self._end = None
        with self._send_lock:
            self._sock = sock
        if self._stop.is_set():   # close() ran while we connected
            sock.close()
            return True, "closed", False
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                line = reader.readline()
                hello = decode(line) if line is not None else None
            except ProtocolError:
                hello = None
            wrong = _check_hello(hello)
            if wrong:
                return True, wrong, False
            if hello.get("busy"):   # all its client places are taken: not lost, try again
                return False, str(hello["busy"]), True
            sock.settimeout(None)
            self._busy_said = None
            self._control, self._dropped_now, self._end = hello.get("control"), 0, None
            self._read_only = {"none": "the daemon takes no commands",
                               "token": None if self.token else "the daemon wants a token"}.get(self._control)
            connected = f"connected to {self.addr} (cgwatch {hello.get('cgwatch')})"
            note = f"; read-only ({self._read_only})" if self._read_only else ""
            self._status(True, connected + note)
            if self._control == "token" and self.token:   # a wrong token shows now, not at the first key
                with self._send_lock:
                    sock.sendall(encode({"cmd": "auth", "id": AUTH_ID, "token": self.token}))
            while True:
                try:
                    line = reader.readline()
                    if line is None:
                        break
                    msg = decode(line)
                except ProtocolError:
                    continue   # a line we cannot read: skip it
                if msg.get("type") == ACK and msg.get("id") == AUTH_ID:
                    if not msg.get("ok"):
                        self._read_only = "the token was refused"
                        self._status(True, f"{connected}; read-only ({self._read_only}: {msg.get('error')})")
                    continue
                self._note(msg)
                self._deliver(msg)
                if msg.get("type") == DROPPED:
                    self._status(True, f"connected to {self.addr}; view fell behind, records dropped")
            if self._end is not None:
                return False, f"run ended ({self._end.get('outcome', 'no outcome')}); daemon closed", False
            return False, "connection closed by the daemon", False
        except OSError as e:
            return False, _reason(e), False
        finally:
            with self._send_lock:
                self._sock = None
            sock.close()
            self._dropped_before += self._dropped_now
            self._dropped_now = 0

    def _note(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == DROPPED and isinstance(msg.get("count"), int):
            self._dropped_now = msg["count"]
        elif kind == R.END:
            self._end = msg
        elif kind == R.EVENT and msg.get("kind") == R.EV_STATE:
            self._paused = bool(msg.get("paused"))


# ---- a blocking connection for scripts and tests ----

class Connection:
    """One blocking connection. ``hello`` is the daemon's greeting (read by ``connect``)."""

    def __init__(self, sock: socket.socket, token: str | None = None):
        self.sock, self.token = sock, token
        self.hello: dict | None = None
        self.closed = False                    # the daemon closed the connection
        self._reader = LineReader(sock.recv)
        self._ids = itertools.count(1)
        self._backlog: deque[dict] = deque()   # messages read while waiting for an ack

    def send(self, cmd: str, value: object = None, **extra) -> int:
        """Send a command; returns its id. ``extra`` fields override (e.g. token=...)."""
        req_id = next(self._ids)
        msg = {"cmd": cmd, "value": value, "id": req_id}
        if self.token:
            msg["token"] = self.token
        msg.update(extra)
        self.sock.sendall(encode(msg))
        return req_id

    def auth(self, timeout: float = 10.0) -> dict:
        """Ask the daemon whether this connection's token grants control: its ack (``ok`` false: why not)."""
        return self.wait_ack(self.send("auth"), timeout)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, timeout: float | None) -> dict | None:
        if self.closed:
            return None
        self.sock.settimeout(timeout)
        try:
            line = self._reader.readline()
        except (socket.timeout, TimeoutError):
            return None
        if line is None:
            self.closed = True
            return None
        return decode(line)

    def recv(self, timeout: float | None = 5.0) -> dict | None:
        """The next message; None after ``timeout`` seconds, or once the daemon closed the connection
        (then ``closed`` is true)."""
        if self._backlog:
            return self._backlog.popleft()
        return self._read(timeout)

    def wait_ack(self, req_id: int, timeout: float = 5.0) -> dict:
        """The ack for ``req_id``; other messages stay queued for ``recv``. TimeoutError if none comes,
        ConnectionError if the daemon closes first."""
        for i, msg in enumerate(self._backlog):
            if msg.get("type") == ACK and msg.get("id") == req_id:
                del self._backlog[i]
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is None:
                if self.closed:
                    raise ConnectionError(f"the daemon closed the connection before acking command {req_id}")
                break
            if msg.get("type") == ACK and msg.get("id") == req_id:
                return msg
            self._backlog.append(msg)
        raise TimeoutError(f"no ack for command {req_id} within {timeout} s")

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(addr: str, token: str | None = None, timeout: float = 5.0) -> Connection:
    """Connect and read the hello (CgwatchError if the daemon speaks another protocol)."""
    conn = Connection(open_connection(addr, timeout), token)
    try:
        try:
            hello = conn.recv(timeout)   # None: closed or silent
        except ProtocolError as e:       # another service on the port (SSH, ...): its first line is no message
            raise CgwatchError(f"{addr}: not a cgwatch daemon (its first line is no protocol message: {e})") from None
        wrong = _check_hello(hello) or hello.get("busy")
        if wrong:
            raise CgwatchError(f"{addr}: {wrong}")
    except BaseException:
        conn.close()
        raise
    conn.hello = hello
    return conn
