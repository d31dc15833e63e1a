"""py-spy around a stretch of a benchmark: `--profile DIR` on a bench script records the server
process while one load runs, and prints the functions that took most of its samples.

py-spy is not a dependency of papo: `.venv/bin/pip install py-spy` before asking for a profile."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path


@contextlib.asynccontextmanager
async def profiled(pid: int | None, output: Path | None, *, top: int = 25) -> AsyncIterator[None]:
    """Record `pid` with py-spy into `output` (collapsed stacks, one line per stack with its sample
    count) for the body of the `async with`; nothing when either is None."""
    if pid is None or output is None:
        yield
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    recorder = await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        "--nonblocking",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        await asyncio.wait_for(recorder.wait(), 30)
        print(summarise(output, top))


def summarise(collapsed: Path, top: int) -> str:
    """The functions with the most samples, inclusive (anywhere on the stack) and exclusive (on
    top), as shares of all samples, from py-spy's collapsed-stack output."""
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for frame in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += count
        exclusive[frames[-1]] += count
    lines = [f"  profile: {total} samples in {collapsed}"]
    lines.append("  inclusive (on the stack)")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("  exclusive (on top)")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in exclusive.most_common(top)]
    return "\n".join(lines)


def _cpu_of(pid: int, *, system_only: bool = False) -> float:
    """User + system (or only system) CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            found += [int(child) for child in children.read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += _children(current)
    return tree


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (the embedded one's backends among them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in {"postgres", "postmaster"}:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def settled(*groups: Callable[[], list[int]], busy: float = 0.1, longest: float = 15.0) -> float:
    """Wait until the processes of `groups` together use less than `busy` of a core (over a quarter
    of a second), at most `longest` seconds; how long that took. A server's background work (scoring,
    consumers) catching up after a load run would otherwise slow whatever is measured next."""
    started = time.monotonic()
    while time.monotonic() - started < longest:
        pids = [pid for find in groups for pid in find()]
        before = sum(_cpu_of(pid) for pid in pids)
        await asyncio.sleep(0.25)
        if sum(_cpu_of(pid) for pid in pids) - before < busy * 0.25:
            break
    return time.monotonic() - started


class CpuMeter:
    """CPU seconds spent by named groups of processes between `start()` and `stop()`; groups are
    looked up again at stop, so processes started in between (PostgreSQL backends) count too."""

    def __init__(self, **groups: Callable[[], list[int]]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.before = {pid: _cpu_of(pid) for find in self.groups.values() for pid in find()}

    def stop(self) -> dict[str, float]:
        return {
            name: sum(_cpu_of(pid) - self.before.get(pid, 0.0) for pid in find()) for name, find in self.groups.items()
        }
