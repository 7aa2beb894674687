"""Webhook intake: receiver throughput and latency (signature verified, stored), drain records/s.

One run on a fresh SQLite store, the receiver's real code path (raw body, signature, replay window,
parse, idempotent insert and commit before the answer; the Prefect trigger is left out because it
is a fire-and-forget queue):

1. In-process ASGI, 8 concurrent senders, at N and 10N events, two shapes side by side:
   SendGrid posts of 100 events each (one ECDSA P-256 verification and one transaction per post)
   and HubSpot posts of one event each (HMAC-SHA256, one transaction per event): events/s, and
   request latency p50/p99.
2. Loopback HTTP (uvicorn on 127.0.0.1) at a fixed request rate of single-event HubSpot posts,
   open loop (requests are sent on schedule whether or not earlier ones have answered, so a slow
   receiver shows up as latency, not as a lower send rate): p50/p99/max latency and errors.
3. ``drain`` of the stored SendGrid events into the store (mapped, one timeline interaction each):
   records/s at N and 10N.

Run: ``python -m bench.webhook_bench`` (``--quick``: N=300 instead of 2,000 and a shorter fixed-rate run).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from api.webhooks import WebhookConfig, router, webhook_config
from flows.webhooks import drain
from identity.store import get_engine

HUBSPOT_SECRET = "bench-hubspot-secret"
SENDGRID_BATCH = 100
CONCURRENCY = 8


class _Vendors:
    """Signs as HubSpot and SendGrid do (shared/specs/README.md)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.b64encode(der).decode()

    def secrets(self, vendor: str) -> str | None:
        return {"hubspot": HUBSPOT_SECRET, "sendgrid": self.public}.get(vendor)

    def sendgrid(self, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(events).encode()
        ts = str(int(time.time()))
        sig = base64.b64encode(self.key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        return body, {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": sig,
                      "X-Twilio-Email-Event-Webhook-Timestamp": ts}

    def hubspot(self, url: str, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps([event]).encode()
        ts = str(int(time.time() * 1000))
        sig = base64.b64encode(hmac.new(HUBSPOT_SECRET.encode(), b"POST" + url.encode() + body + ts.encode(),
                                        hashlib.sha256).digest()).decode()
        return body, {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
                      "X-HubSpot-Signature-v3": sig}


def _sendgrid_events(start: int, n: int) -> list[dict[str, Any]]:
    now = int(time.time())
    kinds = ("delivered", "open", "click", "bounce", "unsubscribe")
    return [{"email": f"customer{i % 5000}@example.com", "timestamp": now - 3600 + i % 3600,
             "event": kinds[i % len(kinds)], "sg_event_id": f"bench-{i}", "sg_message_id": f"m{i // 3}.bench"}
            for i in range(start, start + n)]


def _hubspot_event(i: int) -> dict[str, Any]:
    return {"eventId": i, "subscriptionId": 1008, "portalId": 62515, "appId": 54321,
            "occurredAt": int(time.time() * 1000), "subscriptionType": "contact.propertyChange",
            "attemptNumber": 0, "objectId": 1000 + i % 5000, "changeSource": "CRM", "propertyName": "jobtitle",
            "propertyValue": "Buyer"}


def _app(vendors: _Vendors, engine) -> FastAPI:
    cfg = WebhookConfig(secrets=vendors.secrets, engine=lambda: engine, emit=lambda v, n: None)
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_config] = lambda: cfg
    return app


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _fire(client: httpx.AsyncClient, requests: list[tuple[str, bytes, dict[str, str]]]) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    queue = list(reversed(requests))

    async def worker() -> None:
        nonlocal errors
        while queue:
            path, body, headers = queue.pop()
            t = time.perf_counter()
            resp = await client.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - t)
            errors += resp.status_code != 200
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0, latencies, errors


def intake(app: FastAPI, vendors: _Vendors, n: int, offset: int) -> dict[str, Any]:
    base = "http://bench.local"
    sg = [("/webhooks/sendgrid", *vendors.sendgrid(_sendgrid_events(offset + i, min(SENDGRID_BATCH, n - i))))
          for i in range(0, n, SENDGRID_BATCH)]
    hs = [("/webhooks/hubspot", *vendors.hubspot(base + "/webhooks/hubspot", _hubspot_event(offset + i)))
          for i in range(n)]

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client:
            return await _fire(client, sg), await _fire(client, hs)

    (sg_s, sg_lat, sg_err), (hs_s, hs_lat, hs_err) = asyncio.run(run())
    return {"n": n, "sendgrid_events_per_s": n / sg_s, "sendgrid_post_p50_ms": _pct(sg_lat, .5) * 1e3,
            "sendgrid_post_p99_ms": _pct(sg_lat, .99) * 1e3, "hubspot_events_per_s": n / hs_s,
            "hubspot_post_p50_ms": _pct(hs_lat, .5) * 1e3, "hubspot_post_p99_ms": _pct(hs_lat, .99) * 1e3,
            "errors": sg_err + hs_err, "sendgrid_s": sg_s, "hubspot_s": hs_s}


def fixed_rate(app: FastAPI, vendors: _Vendors, rate: float, seconds: float, offset: int) -> dict[str, Any]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhooks/hubspot"
    total = int(rate * seconds)
    requests = [vendors.hubspot(url, _hubspot_event(offset + i)) for i in range(total)]

    async def run():
        latencies: list[float] = []
        statuses: list[int] = []
        # Without TCP_NODELAY httpx writes headers and body separately and Nagle's algorithm meets
        # delayed ACKs: every request would wait ~40 ms on the client, measuring nothing of ours.
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                                             socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            async def one(body, headers):
                t = time.perf_counter()
                try:
                    resp = await client.post(url, content=body, headers=headers)
                    statuses.append(resp.status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                latencies.append(time.perf_counter() - t)

            start = time.perf_counter()
            tasks = []
            for i, (body, headers) in enumerate(requests):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(body, headers)))
            await asyncio.gather(*tasks)
            return time.perf_counter() - start, latencies, statuses

    try:
        elapsed, lat, statuses = asyncio.run(run())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {"rate_per_s": rate, "requests": total, "achieved_per_s": total / elapsed,
            "p50_ms": _pct(lat, .5) * 1e3, "p99_ms": _pct(lat, .99) * 1e3, "max_ms": max(lat) * 1e3,
            "errors": sum(s != 200 for s in statuses)}


def drain_rate(engine) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = drain(engine, vendor="sendgrid", sync_triggered=False)
    s = time.perf_counter() - t0
    return {"events": out["events"], "drain_s": s, "drain_records_per_s": out["events"] / s}


def main(quick: bool = False) -> dict[str, Any]:
    n = 300 if quick else 2_000
    rate, seconds = (100.0, 2.0) if quick else (200.0, 5.0)
    vendors = _Vendors()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up on a throwaway store: imports, key parsing and the thread pool are paid here,
        # not by whichever measurement happens to run first.
        intake(_app(vendors, get_engine(f"sqlite:///{Path(tmp) / 'warmup.db'}")), vendors, 200, offset=0)
        for size in (n, 10 * n):
            # A fresh store per size, so the 10N drain is not helped or hindered by the N one.
            engine = get_engine(f"sqlite:///{Path(tmp) / f'webhooks-{size}.db'}")
            app = _app(vendors, engine)
            row = intake(app, vendors, size, offset=0)
            row.update(drain_rate(engine))
            rows.append(row)
        engine = get_engine(f"sqlite:///{Path(tmp) / 'webhooks-rate.db'}")
        steady = fixed_rate(_app(vendors, engine), vendors, rate, seconds, offset=0)
        from identity.store import dispose_engines

        dispose_engines()
    print(f"{'events':>7} | {'SG ev/s':>8} {'p50 ms':>7} {'p99 ms':>7} | {'HS ev/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} | {'drain rec/s':>11} | errors")
    for r in rows:
        print(f"{r['n']:>7} | {r['sendgrid_events_per_s']:>8.0f} {r['sendgrid_post_p50_ms']:>7.1f} "
              f"{r['sendgrid_post_p99_ms']:>7.1f} | {r['hubspot_events_per_s']:>8.0f} {r['hubspot_post_p50_ms']:>7.1f} "
              f"{r['hubspot_post_p99_ms']:>7.1f} | {r['drain_records_per_s']:>11.0f} | {r['errors']}")
    print(f"batched vs single-event posts: {rows[0]['sendgrid_events_per_s'] / rows[0]['hubspot_events_per_s']:.1f}x "
          "events/s (SendGrid 100 per post vs HubSpot 1 per post)")
    small, big = rows
    growth = {"data_x": big["n"] / small["n"],
              "sendgrid_intake_time_x": big["sendgrid_s"] / small["sendgrid_s"],
              "hubspot_intake_time_x": big["hubspot_s"] / small["hubspot_s"],
              "drain_time_x": big["drain_s"] / small["drain_s"]}
    print("10x data -> " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    print(f"loopback at {steady['rate_per_s']:.0f} req/s for {seconds:.0f} s (1 HubSpot event each): "
          f"achieved {steady['achieved_per_s']:.0f}/s, p50 {steady['p50_ms']:.1f} ms, p99 {steady['p99_ms']:.1f} ms, "
          f"max {steady['max_ms']:.1f} ms, errors {steady['errors']}")
    return {"rows": rows, "growth": growth, "fixed_rate": steady}


if __name__ == "__main__":
    main(quick=os.environ.get("OMNISYNC_BENCH_QUICK") == "1" or "--quick" in sys.argv)
