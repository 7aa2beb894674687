"""The sandbox framework: local, stateful emulators of vendor APIs on 127.0.0.1.

A vendor sandbox subclasses :class:`Sandbox`: it holds state, seeds it deterministically, and
declares its routes on a FastAPI app. The framework wraps every sandbox with the same machinery:

* a request log with counts per endpoint (``GET /_sandbox/requests``);
* ``POST /_sandbox/reset`` (re-seed) and ``POST /_sandbox/faults`` (switch faults on or off);
* fault injection: latency, 429 and 5xx rates, timeouts (the server stalls past the client's
  timeout), truncated bodies, and a daily quota, each answered in the vendor's own error shape
  through the hooks :meth:`Sandbox.rate_limited`, :meth:`Sandbox.server_error` and
  :meth:`Sandbox.quota_exhausted`;
* serving on 127.0.0.1, with TLS from a local test CA when the vendor SDK insists on https.

:class:`SandboxCluster` starts several sandboxes (threads in this process, or a child process via
``omnisync sandbox``) and describes them as JSON: base URL, credentials, CA path.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@dataclass
class Faults:
    """Fault switches. Rates are probabilities per request (0..1); a seeded RNG decides."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    timeout_stall_s: float = 2.0
    rate_truncate: float = 0.0
    daily_quota: int | None = None  # total API calls allowed before the quota error
    seed: int = 7
    paths: str | None = None  # regex; faults apply only to matching paths when set


@dataclass
class RequestLog:
    entries: list[tuple[float, str, str, int]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    faults_injected: Counter = field(default_factory=Counter)

    def add(self, method: str, endpoint: str, status: int) -> None:
        self.entries.append((time.time(), method, endpoint, status))
        self.counts[f"{method} {endpoint}"] += 1

    def clear(self) -> None:
        self.entries.clear()
        self.counts.clear()
        self.faults_injected.clear()


class Sandbox:
    """Base class of a vendor emulator. Subclasses set ``name`` and implement the hooks."""

    name: str = "sandbox"
    tls: bool = False
    # Paths of another vendor service (an OAuth token endpoint): logged, but outside the API's
    # call counting, limits and injected faults.
    unmetered_paths: frozenset[str] = frozenset()

    def __init__(self, *, size: int = 100, seed: int = 1):
        self.size = size
        self.seed_value = seed
        self.faults = Faults()
        self.log = RequestLog()
        self.calls_used = 0
        self.lock = threading.RLock()
        self.base_url = ""
        self.app = FastAPI(title=f"{self.name} sandbox", docs_url=None, redoc_url=None)
        self._add_control_routes()
        self.routes(self.app)
        self.reset()

    # --- hooks for subclasses ------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        raise NotImplementedError

    def seed(self) -> None:
        """(Re)build the state from ``self.size`` and ``self.seed_value``."""
        raise NotImplementedError

    def credentials(self) -> dict[str, Any]:
        return {}

    def rate_limited(self) -> Response:
        return JSONResponse({"message": "rate limited"}, status_code=429, headers={"Retry-After": "1"})

    def server_error(self) -> Response:
        return JSONResponse({"message": "internal error"}, status_code=503)

    def quota_exhausted(self) -> Response:
        return JSONResponse({"message": "quota exhausted"}, status_code=429)

    def unauthorized(self) -> Response:
        return JSONResponse({"message": "unauthorized"}, status_code=401)

    def response_headers(self) -> dict[str, str]:
        """Headers added to every vendor response (usage counters and the like)."""
        return {}

    def authorized(self, request: Request) -> bool:
        return True

    def summary(self) -> dict[str, Any]:
        return {}

    # --- machinery -----------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.calls_used = 0
            self.rng = random.Random(self.faults.seed)
            self.seed()

    def set_faults(self, **changes: Any) -> Faults:
        with self.lock:
            self.faults = Faults(**{**asdict(self.faults), **changes})
            self.rng = random.Random(self.faults.seed)
            return self.faults

    def _add_control_routes(self) -> None:
        app = self.app

        @app.get("/_sandbox/requests", include_in_schema=False)
        def requests_log() -> dict[str, Any]:
            return {"total": sum(self.log.counts.values()), "counts": dict(self.log.counts),
                    "faults_injected": dict(self.log.faults_injected), "calls_used": self.calls_used}

        @app.post("/_sandbox/reset", include_in_schema=False)
        async def reset(request: Request) -> dict[str, Any]:
            body = await request.body()
            opts = json.loads(body) if body else {}
            with self.lock:
                self.size = int(opts.get("size", self.size))
                self.seed_value = int(opts.get("seed", self.seed_value))
                if opts.get("clear_faults", True):
                    self.faults = Faults()
                self.reset()
            return {"ok": True, "size": self.size, "seed": self.seed_value}

        @app.post("/_sandbox/faults", include_in_schema=False)
        async def faults(request: Request) -> dict[str, Any]:
            return asdict(self.set_faults(**(await request.json())))

        @app.post("/_sandbox/clear_log", include_in_schema=False)
        def clear_log() -> dict[str, Any]:
            self.log.clear()
            return {"ok": True}

        @app.get("/_sandbox/state", include_in_schema=False)
        def state() -> dict[str, Any]:
            with self.lock:
                return self.summary()

    def asgi(self):
        """The sandbox app wrapped in the logging and fault-injection middleware."""
        return _SandboxMiddleware(self)


class _SandboxMiddleware:
    def __init__(self, sandbox: Sandbox):
        self.sb = sandbox
        self.app = sandbox.app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sb = self.sb
        path = scope["path"]
        method = scope["method"]
        if path.startswith("/_sandbox/"):
            return await self.app(scope, receive, send)
        if path in sb.unmetered_paths:
            return await self.app(scope, receive, _LoggedSend(sb, scope, send))

        f = sb.faults
        applies = f.paths is None or re.search(f.paths, path) is not None
        with sb.lock:
            roll = sb.rng.random()
            roll_t = sb.rng.random()
            sb.calls_used += 1
            used = sb.calls_used
        if f.latency_ms and applies:
            await asyncio.sleep(f.latency_ms / 1000)

        injected: Response | None = None
        request = Request(scope)
        if not sb.authorized(request):
            injected = sb.unauthorized()
        elif f.daily_quota is not None and used > f.daily_quota:
            injected = sb.quota_exhausted()
            sb.log.faults_injected["quota"] += 1
        elif applies and roll < f.rate_429:
            injected = sb.rate_limited()
            sb.log.faults_injected["429"] += 1
        elif applies and roll < f.rate_429 + f.rate_5xx:
            injected = sb.server_error()
            sb.log.faults_injected["5xx"] += 1
        elif applies and roll < f.rate_429 + f.rate_5xx + f.rate_timeout:
            sb.log.faults_injected["timeout"] += 1
            await asyncio.sleep(f.timeout_stall_s)
            injected = sb.server_error()
        if injected is not None:
            for k, v in sb.response_headers().items():
                injected.headers.setdefault(k, v)
            sb.log.add(method, path, injected.status_code)
            return await injected(scope, receive, send)

        truncate = applies and roll_t < f.rate_truncate
        extra = sb.response_headers()
        body_parts: list[bytes] = []
        start_msg: dict[str, Any] = {}
        logged = _LoggedSend(sb, scope, send)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for k, v in extra.items():
                    if k.lower().encode() not in present:
                        headers.append((k.encode(), v.encode()))
                message = {**message, "headers": headers}
                if truncate:
                    start_msg.update(message)
                    return
                await logged(message)
            elif message["type"] == "http.response.body" and truncate:
                body_parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    body = b"".join(body_parts)
                    cut = body[: max(1, len(body) // 2)]
                    headers = [(k, v) for k, v in start_msg["headers"] if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(cut)).encode()))
                    sb.log.faults_injected["truncate"] += 1
                    await logged({**start_msg, "headers": headers})
                    await logged({"type": "http.response.body", "body": cut})
            else:
                await logged(message)

        await self.app(scope, receive, send_wrapper)


class _LoggedSend:
    """An ASGI ``send`` that logs the request (route template, status) as its answer starts, so a
    client holding its answer always finds its request in the log (a 204 is complete at its start:
    logging after the app returned raced the client's next look at the log)."""

    def __init__(self, sb: Sandbox, scope: dict[str, Any], send: Any):
        self.sb, self.scope, self.send = sb, scope, send

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            route = self.scope.get("route")
            self.sb.log.add(self.scope["method"], getattr(route, "path", self.scope["path"]), message["status"])
        await self.send(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TLSFiles:
    ca_cert: str
    cert: str
    key: str


def make_tls(directory: Path) -> TLSFiles:
    """A throwaway CA and a 127.0.0.1/localhost server certificate it signs."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
    ca.cert_pem.write_to_path(files.ca_cert)
    server.cert_chain_pems[0].write_to_path(files.cert)
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(files.cert, append=True)
    server.private_key_pem.write_to_path(files.key)
    return files


class SandboxServer:
    """One sandbox served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, sandbox: Sandbox, *, port: int | None = None, tls: TLSFiles | None = None):
        self.sandbox = sandbox
        # Bound here and handed to uvicorn: a port found free and bound later can be taken in between
        # by another process (parallel test workers did).
        self._sock: socket.socket | None = None
        if port is None:
            self._sock = socket.socket()
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(("127.0.0.1", 0))
            port = self._sock.getsockname()[1]
        self.port = port
        self.tls = tls if sandbox.tls else None
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        sandbox.base_url = self.url
        kw: dict[str, Any] = {}
        if self.tls:
            kw = {"ssl_certfile": self.tls.cert, "ssl_keyfile": self.tls.key}
        config = uvicorn.Config(sandbox.asgi(), host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1,
                                access_log=False, lifespan="off", timeout_keep_alive=30, **kw)
        self.server = uvicorn.Server(config)
        sockets = [self._sock] if self._sock else None
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=sockets), name=f"sandbox-{sandbox.name}",
                                       daemon=True)

    def start(self) -> "SandboxServer":
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"sandbox {self.sandbox.name} did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class SandboxCluster:
    """Several sandboxes started together; :meth:`info` is the document ``--info`` writes."""

    def __init__(self, sandboxes: list[Sandbox], *, workdir: Path):
        self.workdir = workdir
        self.tls = make_tls(workdir / "tls") if any(s.tls for s in sandboxes) else None
        self.servers = {s.name: SandboxServer(s, tls=self.tls) for s in sandboxes}

    def start(self) -> "SandboxCluster":
        for server in self.servers.values():
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> "SandboxCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> Sandbox:
        return self.servers[name].sandbox

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, server in self.servers.items():
            out[name] = {"base_url": server.url, "credentials": server.sandbox.credentials(),
                         "ca_cert": self.tls.ca_cert if server.tls else None}
        return out

    def write_info(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info(), indent=2))
        tmp.replace(path)
