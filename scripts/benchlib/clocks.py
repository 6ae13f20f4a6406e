"""Wall and CPU clocks read together, so a child can say how busy it was over a span."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Instant:
    """Wall seconds, CPU seconds of the calling thread, and CPU seconds of the whole process."""

    wall: float
    thread_cpu: float
    process_cpu: float

    @classmethod
    def now(cls) -> Instant:
        return cls(time.perf_counter(), time.thread_time(), time.process_time())

    def __sub__(self, other: Instant) -> Instant:
        return Instant(
            self.wall - other.wall, self.thread_cpu - other.thread_cpu, self.process_cpu - other.process_cpu
        )

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)
