"""Which ``torchrun`` process this is, from its environment variables alone.

Kept apart from ``distributed`` (Lightning Fabric, torch): a command that only asks whether it
is rank 0 (``pretrainflow stage validate`` under ``dvc repro``) then imports neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """The world this process belongs to, from torchrun's variables (one process without them)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))
