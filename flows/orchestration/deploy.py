"""The flow as a Prefect deployment: served from this folder (``pretrainflow serve``), or
deployed to a process work pool with ``prefect deploy`` (``prefect.yaml``).

The deployment form in the Prefect UI shows each parameter with its description (from the
flow's docstring) and the ``section.key=value`` format of ``overrides``; its schedule carries a
timezone; one flow run at a time (``limit``), since a run takes the machine's GPU or cores.
"""

from __future__ import annotations

import os

DEPLOYMENT = "pretrain-finetune"


def local_timezone() -> str:
    """The IANA name of this machine's timezone (``TZ``, /etc/timezone, /etc/localtime), or UTC."""
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    try:
        with open("/etc/timezone") as f:
            name = f.read().strip()
            if name:
                return name
    except OSError:
        pass
    link = os.path.realpath("/etc/localtime")
    return link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "UTC"


def serve(params: str, overrides: list[str], cron: str | None, timezone: str | None = None) -> None:
    """Serve the deployment to the Prefect API until interrupted; runs execute here, one at a
    time. ``cron`` in ``timezone`` (default: this machine's)."""
    from prefect.schedules import Cron  # noqa: PLC0415 - prefect only when serving

    from flows.orchestration.pipeline import pretrain_finetune  # noqa: PLC0415

    schedules = [Cron(cron, timezone=timezone or local_timezone())] if cron else []
    pretrain_finetune.serve(
        name=DEPLOYMENT, schedules=schedules, limit=1, global_limit=1,
        parameters={"params": params, "overrides": overrides},
        description="Validate, pretrain, fine-tune (with a scratch baseline), evaluate and register. "
                    "overrides: one section.key=value per item, e.g. finetune.lr=0.003.",
        tags=["pretrainflow"],
    )
