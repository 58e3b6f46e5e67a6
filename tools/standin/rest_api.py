"""TF Serving's REST API over HTTP/1.1 on loopback, for a `ModelServer`.

Sources (tensorflow/serving, and libevent 2.1.12, which its net_http server runs on):
- model_servers/http_rest_api_util.cc: the two path regexes; "both a version and a
  label" refused. http_rest_api_handler.cc ProcessRequest: the routes, and an unmatched
  /v1/ path as "Malformed request". Errors as `{"error": "..."}` with the status
  http_server.cc ToHTTPStatusCode gives the code.
- model_servers/http_server.cc: paths outside /v1/ (and the metrics path) go to no
  handler: net_http's evhttp_server.cc answers them with libevent's 404 page. Every
  /v1/ request is counted in request_count by its status, and a successful one's
  latency sampled (RecordModelRequestCount, RecordRequestLatency). Requests are run on
  a fixed pool of --rest_api_num_threads threads (default 4 per core, server.h).
- libevent http.c (evhttp_get_body, evhttp_get_body_length, evhttp_send_error): the body
  is read whole before the request is handled. No Content-Length (and no chunked
  encoding) means an empty body, which :predict answers 400 "JSON Parse error: The
  document is empty". A Content-Length that is not a decimal number or is negative is
  an invalid header: 400 with libevent's HTML error page, and the connection closes. A
  body larger than the server's max_body_size is 413, the same way; TF Serving sets no
  limit (so a huge declared length just waits for its bytes), where the stand-in keeps
  MAX_BODY_BYTES, so that a lying length costs neither memory nor a thread for long.
  A connection that sends nothing for HTTP_READ_TIMEOUT (50 s) is closed, unanswered.
  Connections are watched by one event loop and requests run on the fixed pool
  (net_http's EvHTTPServer, `_Server`), so idle connections hold no thread.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from tools.standin.core import ModelServer, default_threads
from tools.standin.errors import ApiError, invalid

# http_rest_api_util.cc: kPredictionApiGegex and kModelStatusApiRegex (case-insensitive).
PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
API_RE = re.compile(r"/v1/.*", re.IGNORECASE)  # http_rest_api_handler kPathRegex
CONTENT_LENGTH_RE = re.compile(r"[ \t]*[+-]?\d+")  # what evutil_strtoll reads in full
MAX_BODY_BYTES = 256 * 2**20  # the stand-in's own cap; TF Serving has none
READ_TIMEOUT = 50  # libevent's HTTP_READ_TIMEOUT, seconds


def error_page(status: int, reason: str) -> bytes:
    """libevent http.c evhttp_send_error's page (ERR_FORMAT)."""
    return (
        f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n"
        "</BODY></HTML>\n"
    ).encode()


def handle(model: ModelServer, method: str, path: str, body: bytes) -> tuple[int, dict | None]:
    """One request under /v1/: (HTTP status, JSON body); None: not an API path."""
    if not API_RE.fullmatch(path):
        return 404, None
    started = time.monotonic()
    name, api = "", ""
    try:
        if refusal := model.admit():
            raise refusal
        if method == "POST" and (m := PREDICT_RE.fullmatch(path)):
            name, version, label, verb = m.groups()
            name, label, api = unquote(name), label and unquote(label), verb.lower()
            if version and label:
                raise invalid(
                    f"Both model version ({version}) and model version label ({label}) "
                    "cannot be supplied."
                )
            if api != "predict":
                raise ApiError("UNIMPLEMENTED", f"{verb} is not served by this stand-in")
            answer = model.predict(name, version, label, body)
        elif method == "GET" and (m := STATUS_RE.fullmatch(path)):
            name, version, label, sub = m.groups()
            if not name:
                raise invalid("Missing model name in request.")
            name, label = unquote(name), label and unquote(label)
            if sub:
                answer = model.metadata(name, version, label)
            else:
                answer = model.status(name, version, label)
        else:
            raise invalid(f"Malformed request: {method} {path}")
    except ApiError as e:
        model.metrics.count(name, e.code)
        return e.status, {"error": e.message}
    except Exception as e:  # a stand-in bug, not the request's fault: answer anyway
        model.metrics.count(name, "UNKNOWN")
        return 500, {"error": f"stand-in: {type(e).__name__}: {e}"}
    model.metrics.count(name, "OK")
    model.metrics.latency(name, api, "REST", (time.monotonic() - started) * 1e6)
    return 200, answer


class _BodyError(Exception):
    """The request's body cannot be read: libevent's answer (400 or 413)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    timeout = READ_TIMEOUT
    # TCP_NODELAY: headers and body go out in two writes; with Nagle on, the second waits
    # for the client's delayed ACK, adding ~40 ms to every kept-alive round trip.
    disable_nagle_algorithm = True
    server: _Server

    def _declared_length(self) -> int | None:
        """evhttp_get_body_length: None without a Content-Length; _BodyError if invalid."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not CONTENT_LENGTH_RE.fullmatch(raw) or int(raw) < 0:
            raise _BodyError(400, "Bad Request")
        if int(raw) > self.server.max_body_bytes:
            raise _BodyError(413, "Request Entity Too Large")
        return int(raw)

    def handle_expect_100(self) -> bool:
        # libevent refuses an oversized body before it sends "100 Continue".
        try:
            self._declared_length()
        except _BodyError as e:
            self._fail(e)
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        if self.command not in ("POST", "PUT", "PATCH", "GET", "DELETE", "OPTIONS"):
            return b""  # evhttp_method_may_have_body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self._declared_length()
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise _BodyError(400, "Bad Request") from None
            if size < 0:
                raise _BodyError(400, "Bad Request")
            total += size
            if total > self.server.max_body_bytes:
                raise _BodyError(413, "Request Entity Too Large")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after the chunk

    def _serve(self) -> None:
        model = self.server.model
        with model._lock:
            model.connections.add(self.client_address)
        try:
            body = self._read_body()
        except _BodyError as e:
            self._fail(e)
            return
        path = urlsplit(self.path).path
        if self.command == "GET" and model.metrics_path and path == model.metrics_path:
            self._reply(200, model.metrics.page().encode(), "text/plain")
            return
        status, answer = handle(model, self.command, path, body)
        if answer is None:
            self._fail(_BodyError(404, "Not Found"))
        else:
            self._reply(status, json.dumps(answer).encode(), "application/json")

    def _reply(self, status: int, payload: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:  # the client sent "Connection: close": say we will
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _fail(self, error: _BodyError) -> None:
        """evhttp_send_error: libevent's page, then the connection closes."""
        self.close_connection = True
        self._reply(error.status, error_page(error.status, error.reason), "text/html")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass


class _Server(HTTPServer):
    """libevent's model, so that threads stay bounded: one loop waits on every connection
    (as many as the system allows); a connection with a request to read goes to a fixed
    pool of `num_threads` threads (TF Serving's --rest_api_num_threads), which reads and
    answers that one request, then hands the connection back to the loop. An idle
    connection holds no thread and is closed after READ_TIMEOUT. (Pipelined requests,
    sent before the previous answer, are not read; HTTP clients do not pipeline.)"""

    model: ModelServer

    def __init__(self, address: tuple[str, int], num_threads: int | None = None):
        super().__init__(address, _Handler)
        self.max_body_bytes = MAX_BODY_BYTES
        self.num_threads = num_threads or default_threads()
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="standin-http")
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._rearm: list[_Connection] = []
        self._rearm_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.connections_open = 0  # connections the loop holds (for tests)

    def serve_forever(self, poll_interval: float = 1.0) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle: dict[_Connection, float] = {}
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=poll_interval):
                    if key.data is None:
                        self._accept(idle)
                    elif key.data == "wake":
                        self._wake_r.recv(4096)
                    else:
                        self._selector.unregister(key.fileobj)
                        idle.pop(key.data, None)
                        self._pool.submit(key.data.serve_one)
                with self._rearm_lock:
                    back, self._rearm = self._rearm, []
                now = time.monotonic()
                for connection in back:
                    idle[connection] = now
                    self._selector.register(connection.socket, selectors.EVENT_READ, connection)
                for connection in [c for c, t in idle.items() if now - t > READ_TIMEOUT]:
                    self._selector.unregister(connection.socket)
                    del idle[connection]
                    connection.close()
                self.connections_open = len(idle)
        finally:
            for connection in idle:
                connection.close()
            self._stopped.set()

    def _accept(self, idle: dict[_Connection, float]) -> None:
        try:
            sock, address = self.socket.accept()
        except OSError:
            return
        connection = _Connection(sock, address, self)
        idle[connection] = time.monotonic()
        self._selector.register(sock, selectors.EVENT_READ, connection)

    def rearm(self, connection: _Connection) -> None:
        """Wait for the connection's next request (from a pool thread)."""
        with self._rearm_lock:
            self._rearm.append(connection)
        self._wake_w.send(b"x")

    def shutdown(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._stopped.wait(10)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class _Connection:
    """One client connection: its handler (and buffered reader) across its requests."""

    def __init__(self, sock: socket.socket, address: Any, server: _Server):
        self.socket, self.server = sock, server
        self.handler = _Handler.__new__(_Handler)
        self.handler.request, self.handler.client_address = sock, address
        self.handler.server = server
        self.handler.setup()  # rfile/wfile and the READ_TIMEOUT; no request read yet

    def serve_one(self) -> None:
        try:
            self.handler.close_connection = True  # handle_one_request clears it for keep-alive
            self.handler.handle_one_request()
            keep = not self.handler.close_connection
        except Exception:  # noqa: BLE001 - a broken connection ends quietly
            keep = False
        if keep:
            self.server.rearm(self)
        else:
            self.close()

    def close(self) -> None:
        try:
            self.handler.finish()
        except Exception:  # noqa: BLE001
            pass
        self.server.shutdown_request(self.socket)
