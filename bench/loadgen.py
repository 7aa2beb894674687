"""An open-loop HTTP/1.1 load generator in its own lean process (standard library, uvloop if present).

Requests go out at a fixed rate over keep-alive connections, and each one's latency is measured
from its *scheduled* send time, so a server falling behind shows up as queueing instead of being
hidden (no coordinated omission). The generator runs apart from the benchmark that seeded the store:
that process holds hundreds of thousands of objects, and a garbage collection there would stall the
client and be counted as the server's latency. Here the heap is small and frozen before the run.

Run: ``python -m bench.loadgen PORT RPS HEADER-NAME`` with a JSON list of request paths on stdin and
the header's value in ``OMNISYNC_LOADGEN_HEADER_VALUE``; prints one JSON object (latencies in seconds,
errors, elapsed).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

WARMUP = 50


async def open_loop(port: int, paths: list[str], rps: int, header: str, conns: int = 24
                    ) -> tuple[list[float], int, float]:
    """Send ``paths`` (after ``WARMUP`` unmeasured ones from their start) at ``rps``."""
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(conns):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat: list[float] = []
    errors = 0

    async def one(path: str) -> bool:
        reader, writer = await idle.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{header}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            return head.startswith(b"HTTP/1.1 200")
        finally:
            idle.put_nowait((reader, writer))

    async def fire(path: str, due: float) -> None:
        nonlocal errors
        try:
            ok = await one(path)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            ok = False
        lat.append(time.perf_counter() - due)
        errors += not ok

    for p in paths[:WARMUP]:  # warm up: the server's key cache, pool and prepared statements
        await one(p)
    gc.collect()
    gc.freeze()
    start = time.perf_counter() + 0.05
    tasks = []
    for i, path in enumerate(paths):
        due = start + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(path, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        _r, w = idle.get_nowait()
        w.close()
    return lat, errors, elapsed


def main() -> int:
    port, rps, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    paths = json.load(sys.stdin)
    header = f"{name}: {os.environ['OMNISYNC_LOADGEN_HEADER_VALUE']}"
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the project installs it with uvicorn[standard]
        runner = asyncio.run
    else:
        runner = uvloop.run
    lat, errors, elapsed = runner(open_loop(port, paths, rps, header))
    json.dump({"latencies": lat, "errors": errors, "elapsed": elapsed}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
