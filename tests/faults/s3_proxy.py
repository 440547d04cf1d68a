"""A fault-injecting HTTP proxy on 127.0.0.1 in front of moto's S3 server.

Each request is forwarded to the upstream server unless the seeded schedule picks a fault for it:
a 503 SlowDown answer, a connection reset (the socket is closed without a reply), or a slow reply
(forwarded, then held back for a while). Every request is counted per object key, so tests can
assert that retries stay bounded. Standard library only, plus numpy's seeded Generator."""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import numpy as np

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
# Hop-by-hop headers, and the length we set ourselves from the bytes we actually send.
_NOT_FORWARDED = {"transfer-encoding", "connection", "content-length", "keep-alive"}

FAULTS = ("503", "reset", "slow")


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request (they add up to at most 1); `slow_seconds` is how
    long a slow reply is held back (below every client timeout: slow, not dead)."""

    slow_down: float = 0.0  # 503 SlowDown
    reset: float = 0.0  # connection closed without a reply
    slow: float = 0.0  # reply delayed by slow_seconds
    slow_seconds: float = 0.3

    def __post_init__(self) -> None:
        if min(self.slow_down, self.reset, self.slow) < 0 or self.total() > 1:
            raise ValueError(f"fault rates must be >= 0 and add up to at most 1: {self}")

    def total(self) -> float:
        return self.slow_down + self.reset + self.slow


@dataclass
class Request:
    """One request the proxy saw, and what it did with it (None: forwarded untouched)."""

    method: str
    key: str  # "bucket/key" (a listing: "bucket/")
    fault: str | None


@dataclass
class Schedule:
    """Draws the fault for each request in arrival order from a seeded Generator. `only` limits
    faults to keys for which it returns True (other requests always pass)."""

    rng: np.random.Generator
    rates: FaultRates
    only: Callable[[str], bool] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, key: str) -> str | None:
        with self.lock:
            draw = float(self.rng.random())  # drawn for every request: the order is the seed's
        if self.only is not None and not self.only(key):
            return None
        edges = np.cumsum([self.rates.slow_down, self.rates.reset, self.rates.slow])
        for name, edge in zip(FAULTS, edges, strict=True):
            if draw < edge:
                return name
        return None


def object_key(path: str) -> str:
    """`/bucket/a/b.txt?x=1` -> "bucket/a/b.txt" (path-style addressing, as for 127.0.0.1)."""
    return unquote(urlsplit(path).path).lstrip("/")


class FaultyS3Proxy:
    """`with FaultyS3Proxy(upstream, Schedule(...)) as proxy:` point AWS_ENDPOINT_URL at
    `proxy.endpoint`; `proxy.requests` lists every request with the fault it got."""

    def __init__(self, upstream: str, schedule: Schedule) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.schedule = schedule
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what tests read --------------------------------------------------------------------
    def record(self, method: str, key: str, fault: str | None) -> None:
        with self._lock:
            self.requests.append(Request(method, key, fault))

    def per_key(self) -> Counter[str]:
        """Requests per object key (all methods, faults included)."""
        with self._lock:
            return Counter(r.key for r in self.requests)

    def faults(self) -> Counter[str]:
        """How many of each fault were injected."""
        with self._lock:
            return Counter(r.fault for r in self.requests if r.fault is not None)


def _handler_for(proxy: FaultyS3Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args: object) -> None:  # quiet
            return

        def _handle(self) -> None:
            body = self._read_body()
            key = object_key(self.path)
            fault = proxy.schedule.next_fault(key)
            proxy.record(self.command, key, fault)
            if fault == "reset":
                self._reset()
            elif fault == "503":
                self._send(503, [("Content-Type", "application/xml")], SLOW_DOWN)
            else:
                status, headers, data = self._forward(body)
                if fault == "slow":
                    time.sleep(proxy.schedule.rates.slow_seconds)
                self._send(status, headers, data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()

        def _reset(self) -> None:
            """Close without a reply; SO_LINGER 0 makes it a TCP RST, as a dropped peer does."""
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in {
                    "transfer-encoding", "connection", "keep-alive"}]  # fmt: skip
                return response.status, kept, data
            finally:
                conn.close()

        def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            has_length = False
            for name, value in headers:
                if name.lower() == "content-length":
                    # HEAD: the upstream length of the object, though no body follows
                    value = value if self.command == "HEAD" else str(len(data))
                    has_length = True
                self.send_header(name, value)
            if not has_length:
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
