"""`StandInServer`: a `ModelServer` behind REST (and gRPC), with TF Serving's polls."""

from __future__ import annotations

import threading
import time

import grpc

from tools.standin.core import ModelServer, log
from tools.standin.grpc_api import grpc_server
from tools.standin.rest_api import _Server


class StandInServer:
    """`ModelServer` over REST on 127.0.0.1 in a background thread and, given a
    `grpc_port` (0: a free one), over gRPC too. `host` 0.0.0.0 is for inside a container
    (docker/standin), where the engine maps the ports.

    `poll_seconds` (--file_system_poll_wait_seconds) starts the file-system poll: new
    version folders load, retired ones unload; `config_poll_seconds`
    (--model_config_file_poll_wait_seconds) re-reads the model's config_file. None: no
    poll (TF Serving's 0).
    """

    def __init__(
        self,
        model: ModelServer,
        port: int = 0,
        grpc_port: int | None = None,
        host: str = "127.0.0.1",
        *,
        poll_seconds: float | None = None,
        config_poll_seconds: float | None = None,
        rest_threads: int | None = None,
    ):
        self.model = model.load() if not model.states else model
        self.httpd = _Server((host, port), rest_threads)
        self.httpd.model = self.model
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True)]
        self._stop = threading.Event()
        if poll_seconds or (config_poll_seconds and model.config_file is not None):
            self._threads.append(
                threading.Thread(
                    target=self._poll, args=(poll_seconds, config_poll_seconds), daemon=True
                )
            )
        self.grpc: grpc.Server | None = None
        self.grpc_target: str | None = None  # host:port, as the gRPC client takes it
        if grpc_port is not None:
            try:
                self.grpc, bound = grpc_server(self.model, grpc_port, host)
            except Exception:
                self.httpd.server_close()
                raise
            self.grpc_target = f"127.0.0.1:{bound}"

    def _poll(self, files: float | None, config: float | None) -> None:
        """server.cc: the config poll and the file-system poll, each on its period."""
        now = time.monotonic()
        due = {"files": now + files if files else None}
        due["config"] = now + config if config and self.model.config_file else None
        while True:
            wake = min(t for t in due.values() if t is not None)
            if self._stop.wait(max(0.0, wake - time.monotonic())):
                return
            now = time.monotonic()
            try:
                if due["config"] is not None and due["config"] <= now:
                    self.model.poll_config()
                    due["config"] = now + config  # type: ignore[operator]
                if due["files"] is not None and due["files"] <= now:
                    self.model.refresh()
                    due["files"] = now + files  # type: ignore[operator]
            except Exception as e:  # noqa: BLE001 - a poll that failed is logged, not fatal
                log.error("stand-in poll failed: %s: %s", type(e).__name__, e)

    def start(self) -> StandInServer:
        if self.grpc is not None:
            self.grpc.start()
        for thread in self._threads:
            thread.start()
        return self

    def serve_forever(self) -> None:
        """Start, then block until interrupted (the command line)."""
        self.start()
        try:
            while not self._stop.wait(3600):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self.grpc is not None:
            self.grpc.stop(grace=None).wait(5)
        self.httpd.shutdown()
        self.httpd.server_close()
        # A load still running in a daemon thread would be killed inside TensorFlow's C++
        # at exit ("terminate called ..."): let it finish.
        self.model.wait_loaded(timeout=60)
        self.model.close()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
