"""The control interfaces a real detector offers beside its data stream, as ``serve`` simulates them, so clients
that ask the detector for its settings before they read (LiberTEM-live does, even when it only listens) work:

- Merlin's TCP control port (6341 on the detector PC): ``MPX,<10-digit length>,GET,PARAM,0`` answered with
  ``MPX,<length>,GET,PARAM,VALUE,0``; ``SET,PARAM,VALUE`` and ``CMD,NAME,0`` answered with ``...,PARAM,<code>``
  (0 OK, 2 unrecognised, 3 out of range: a replay cannot change its frames);
- the DECTRIS SIMPLON REST API (the DCU's HTTP port): ``GET /detector/api/version/`` and
  ``GET /{module}/api/1.8.0/config/PARAM`` give ``{"value": ...}``; ``PUT`` of the stream interface's settings
  (``mode``, ``header_detail``) is taken, other ``PUT``s must not change what the replay sends.

Each runs in a daemon thread until ``close()``; it answers from a fixed dict of parameters. A real detector's
control interface outlives any one acquisition, and clients ask it right after the acquisition header, which
for a short scan is after the last frame went out: ``wait_idle`` keeps it answering until clients have left it
alone for a while, before ``serve`` returns."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIMPLON_VERSION = "1.8.0"
_OK, _UNRECOGNISED, _OUT_OF_RANGE = 0, 2, 3


class _Api:
    """When the interface was last asked something, to let it outlive the stream while clients still use it."""

    last_used = 0.0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def wait_idle(self, grace: float, limit: float) -> None:
        """Return once no request came for ``grace`` seconds (counted from now at the earliest), or after
        ``limit`` seconds."""
        start = time.monotonic()
        self.last_used = max(self.last_used, start)
        while time.monotonic() - self.last_used < grace and time.monotonic() - start < limit:
            time.sleep(0.05)


class MerlinControlServer(_Api):
    """Merlin's control port, answering GET from ``params`` (``IMAGEX``, ``IMAGEY``, ``COUNTERDEPTH``, ...)."""

    def __init__(self, host: str, port: int, params: dict[str, Any]) -> None:
        self.params = {k.upper(): str(v) for k, v in params.items()}
        self.server = socket.create_server((host, port))
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="merlin-control", daemon=True)
        self._thread.start()

    def answer(self, command: bytes) -> bytes:
        """The reply to one command (without its ``MPX`` prefix)."""
        from stempress.live.merlin import mpx_message

        parts = command.decode("ascii", "replace").split(",")
        method, param = parts[0].upper(), (parts[1].upper() if len(parts) > 1 else "")
        if method == "GET":
            value = self.params.get(param)
            fields = [method, param, value if value is not None else "0", str(_OK if value is not None
                                                                              else _UNRECOGNISED)]
        elif method == "SET":
            value = parts[2] if len(parts) > 2 else ""
            code = _UNRECOGNISED if param not in self.params else _OK if value == self.params[param] else \
                _OUT_OF_RANGE
            fields = [method, param, str(code)]
        elif method == "CMD":  # STARTACQUISITION, SOFTTRIGGER, ...: the replay starts when a receiver connects
            fields = [method, param, str(_OK)]
        else:
            fields = [method, param, str(_UNRECOGNISED)]
        return mpx_message(",".join(fields).encode("ascii"))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        from stempress.live.merlin import MPX_BYTES

        conn.settimeout(0.5)
        self.touch()
        with conn:
            while not self._stop.is_set():
                try:
                    prefix = _exactly(conn, MPX_BYTES)
                    if not (prefix.startswith(b"MPX,") and prefix[4:14].isdigit()):
                        return
                    conn.sendall(self.answer(_exactly(conn, int(prefix[4:14]) - 1)))
                    self.touch()
                except TimeoutError:
                    continue
                except (ConnectionError, OSError):
                    return

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(timeout=1)


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class SimplonApiServer(_Api):
    """The SIMPLON REST API of a DCU, answering ``GET .../config/PARAM`` from ``config`` (per module)."""

    def __init__(self, host: str, port: int, config: dict[str, dict[str, Any]]) -> None:
        self.config = config
        handler = type("Handler", (_SimplonHandler,), {"api": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.2,), name="simplon-api",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=1)


class _SimplonHandler(BaseHTTPRequestHandler):
    api: SimplonApiServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the DCU (DEigerClient reuses one connection)

    def log_message(self, *args: object) -> None:  # no request log on the console
        pass

    def _route(self) -> tuple[str, str, str] | None:
        """``(module, task, param)`` of ``/{module}/api/{version}/{task}/{param}``."""
        parts = self.path.strip("/").split("/")
        if len(parts) >= 4 and parts[1] == "api" and parts[2] == SIMPLON_VERSION:
            return parts[0], parts[3], "/".join(parts[4:])
        return None

    def _reply(self, status: int, body: Any) -> None:
        self.api.touch()
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/api/version"):
            return self._reply(200, {"value": SIMPLON_VERSION, "value_type": "string"})
        route = self._route()
        values = self.api.config.get(route[0], {}) if route and route[1] in ("config", "status") else {}
        if route is None or route[2] not in values:
            return self._reply(404, {"error": f"{self.path}: not simulated"})
        value = values[route[2]]
        kind = "string" if isinstance(value, str) else "float" if isinstance(value, float) else "uint"
        return self._reply(200, {"value": value, "value_type": kind, "access_mode": "r"})

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self._route()
        if route is None:
            return self._reply(404, {"error": f"{self.path}: not simulated"})
        module, task, param = route
        try:
            value = json.loads(body or b"{}").get("value")
        except (ValueError, AttributeError):
            return self._reply(400, {"error": "the body is not {\"value\": ...}"})
        current = self.api.config.get(module, {})
        if task == "config" and module == "stream" and param in ("mode", "header_detail"):
            current[param] = value  # how the stream is sent: enabled, basic header (what serve sends anyway)
            return self._reply(200, [param])
        if task == "config" and param in current and current[param] == value:
            return self._reply(200, [])
        if task == "command" and param in ("arm", "trigger", "disarm", "cancel", "abort"):
            return self._reply(200, {"sequence id": current.get("series", 1)} if param == "arm" else {})
        return self._reply(400, {"error": f"{module} {task} {param}={value!r}: a replay cannot change this"})
