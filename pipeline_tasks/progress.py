"""Progress of a training loop, on a terminal and in logs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """A one-line progress bar with views/s and ETA on a terminal; elsewhere a log line every
    10% (Prefect and CI logs are not terminals)."""

    def __init__(self, total_steps: int, views_per_step: int, label: str, enabled: bool = True,
                 first_step: int = 0) -> None:
        self.total, self.views, self.label, self.enabled = total_steps, views_per_step, label, enabled
        self.start, self.first = time.perf_counter(), first_step
        self.tty = enabled and sys.stderr.isatty()
        self.next_log = first_step / max(1, total_steps) + 0.1

    def update(self, steps_done: int) -> None:
        if not self.enabled or steps_done <= self.first:
            return
        rate = (steps_done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        share = steps_done / max(1, self.total)
        eta = (self.total - steps_done) / max(rate, 1e-9)
        text = (f"{self.label} {share:6.1%} step {steps_done}/{self.total} "
                f"{rate * self.views:,.0f} views/s ETA {eta:,.0f} s")
        if self.tty:
            bar = "#" * int(share * 30)
            print(f"\r[{bar:<30}] {text}", end="" if steps_done < self.total else "\n", file=sys.stderr)
        elif share >= self.next_log or steps_done == self.total:
            log.info(text)
            self.next_log = share + 0.1
