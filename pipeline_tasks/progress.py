"""Progress of a training loop: a tqdm bar on a terminal; elsewhere (Prefect, CI, a worker's
log) a log line every 10%, since a bar redrawn with carriage returns is noise in a log file."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """Steps done of ``total_steps``, with views/s and the time left.

    ``views_per_step``: images (or augmented views) one step processes, for the rate;
    ``first_step``: where a resumed run starts; ``enabled``: False on every rank but the first.
    """

    def __init__(self, total_steps: int, views_per_step: int, label: str, enabled: bool = True,
                 first_step: int = 0) -> None:
        self.total, self.views, self.label, self.enabled = total_steps, views_per_step, label, enabled
        self.start, self.first, self.done = time.perf_counter(), first_step, first_step
        self.bar = tqdm(total=total_steps, initial=first_step, desc=label, unit="step", file=sys.stderr,
                        dynamic_ncols=True, leave=True) if enabled and sys.stderr.isatty() else None
        self.next_log = first_step / max(1, total_steps) + 0.1

    def update(self, steps_done: int) -> None:
        if not self.enabled or steps_done <= self.done:
            return
        rate = (steps_done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate * self.views:,.0f} views/s", refresh=False)
            self.bar.update(steps_done - self.done)
            if steps_done >= self.total:
                self.bar.close()
        else:
            share = steps_done / max(1, self.total)
            if share >= self.next_log or steps_done >= self.total:
                eta = (self.total - steps_done) / max(rate, 1e-9)
                log.info("%s %5.1f%% step %d/%d %s views/s ETA %s s", self.label, 100 * share, steps_done,
                         self.total, f"{rate * self.views:,.0f}", f"{eta:,.0f}")
                self.next_log = share + 0.1
        self.done = steps_done
