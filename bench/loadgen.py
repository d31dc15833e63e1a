"""A small keep-alive HTTP/1.1 load generator, light enough to share two cores with the server.

Both sides of every comparison are driven by this same code for the same time, so the ratio
between them is what matters, not the absolute numbers."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @classmethod
    def combine(cls, results: list[LoadResult]) -> LoadResult:
        return cls(
            sum(r.requests for r in results),
            sum(r.errors for r in results),
            sum(r.seconds for r in results),
            [latency for r in results for latency in r.latencies_ms],
        )

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.rate:8.0f} req/s  p50 {self.percentile(0.5):6.2f} ms  p99 {self.percentile(0.99):6.2f} ms"
            f"  ({self.requests} ok, {self.errors} errors)"
        )


def build_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: its status, headers (lower-cased names) and body."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _read_response(reader: asyncio.StreamReader) -> int:
    return (await read_response(reader))[0]


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    seconds: float,
    expect: Callable[[int], bool] = lambda status: 200 <= status < 300,
    total: int | None = None,
) -> LoadResult:
    """Requests from `make_request(1, 2, ...)` on `connections` keep-alive connections, for
    `seconds` or until `total` were sent, whichever comes first."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        writer: asyncio.StreamWriter | None = None
        try:
            while time.perf_counter() < deadline and (total is None or counter < total):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    counter += 1
                    request = make_request(counter)
                    started = time.perf_counter()
                    writer.write(request)
                    status = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    # a connection closed without an answer (or a garbled one) is an error of the
                    # run, counted like a refusal; the worker opens a new connection and goes on
                    errors += 1
                    if writer is not None:
                        writer.close()
                    writer = None
                    continue
                if expect(status):
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1
        finally:
            if writer is not None:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, latencies)


async def sequential_latency(host: str, port: int, request: bytes, count: int) -> float:
    """Median latency in ms of `count` identical requests on one connection."""
    reader, writer = await asyncio.open_connection(host, port)
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            if status != 200:
                raise RuntimeError(f"unexpected status {status}")
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()
    return statistics.median(samples)
