"""Event-loop lag: how late a timer fires. A busy or blocked loop delays every request and stream."""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopLagMonitor:
    def __init__(self, interval: float = 0.05, window: int = 1200) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=window)  # one minute at the default interval

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, (time.perf_counter() - started - self.interval) * 1000))

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}

        def pick(fraction: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

        return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 2)}
