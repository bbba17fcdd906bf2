"""How many CPU cores the decode pools use: every core this process may run on, not a cap."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: ``os.process_cpu_count()`` (Python 3.13+), else the
    size of its affinity mask (Linux: ``taskset``, cpusets), else ``os.cpu_count()``; at least 1.
    A container's CPU quota (``docker --cpus``) is time, not cores, and is not seen here."""
    process_cpu_count = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:
        return int(process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
