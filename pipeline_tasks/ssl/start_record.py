"""What the start stage decided (``ssl.start``), as the training stages read it: ``start.json``
holds the decision (choice, encoder, weights), ``probe.json`` beside it the reason and the
probe's numbers. Apart from the decision's code so that pretraining, which reads the record,
does not depend on how the start was decided."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_tasks.ssl.config import PretrainConfig

START_FILE, PROBE_FILE = "start.json", "probe.json"


@dataclass(frozen=True)
class StartRecord:
    """The start a run took and why: ``choice`` (``scratch``, ``imagenet`` or ``init``), the
    encoder and weights it means, a sentence, and the probe's validation accuracies."""

    choice: str
    encoder: str
    init: str | None
    reason: str
    probe: dict[str, float] = field(default_factory=dict)

    def applied(self, cfg: PretrainConfig) -> PretrainConfig:
        """``cfg`` with this start's encoder and weights."""
        return cfg.model_copy(update={"encoder": self.encoder, "init": self.init})

    @property
    def decision(self) -> str:
        """What the training stages read (``start.json``): the choice, encoder and weights; the
        reason and the probe's numbers are beside it (``probe.json``), so a probe that changes
        its numbers but not its choice retrains nothing."""
        return json.dumps({"choice": self.choice, "encoder": self.encoder, "init": self.init}, sort_keys=True)


def read_start(out_dir: str | Path) -> StartRecord:
    found = json.loads((Path(out_dir) / START_FILE).read_text())
    return StartRecord(**found, **json.loads((Path(out_dir) / PROBE_FILE).read_text()))
