"""Where a command's time goes: wall and CPU seconds per named phase, for the --json summary.

CPU seconds are the process's (all its threads): on a shared machine they compare designs where wall seconds
cannot. A phase entered several times adds up.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Phases:
    """Seconds per phase: `with phases("gptq"): ...`; `as_dict()` for a summary."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c

    def add(self, other: dict[str, dict[str, float]], prefix: str = "") -> None:
        """Merge another command's `as_dict()` (e.g. a step of shrink), its names prefixed."""
        for name, v in other.get("seconds", {}).items():
            self.wall[prefix + name] = self.wall.get(prefix + name, 0.0) + v
        for name, v in other.get("cpu_seconds", {}).items():
            self.cpu[prefix + name] = self.cpu.get(prefix + name, 0.0) + v

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"seconds": {k: round(v, 3) for k, v in self.wall.items()},
                "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()}}
