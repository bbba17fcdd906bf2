"""The promotion gate as a pure function: which version may take the ``champion`` alias.

A challenger takes ``champion`` only when all of these hold:

1. the run is not a DVC experiment (``dvc exp run`` explores; it never promotes);
2. it beat its own from-scratch baseline (``lift_points > 0``), unless
   ``register.require_lift`` is off;
3. it solves the same task as the champion (the same class names);
4. it was scored on the same test split as the champion (equal fingerprints), or the champion
   was re-scored on the challenger's split;
5. it beats the champion on ``register.metric`` by more than ``register.min_improvement``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    """A model as the gate sees it: what it was scored on and how well."""

    version: str
    score: float  # register.metric on its own test split
    test_fingerprint: str
    classes: tuple[str, ...]
    lift_points: float | None = None  # pretrained minus scratch, in points; None: no baseline


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_score: float | None = None  # the number the challenger was compared with


def decide(
    challenger: Scored, champion: Scored | None, metric: str, min_improvement: float,
    require_lift: bool = True, experiment: str | None = None,
    rescore_champion: Callable[[], float] | None = None,
) -> Decision:
    """Apply the rules above; ``rescore_champion`` scores the champion on the challenger's
    test split when the fingerprints differ (it may raise ``ValueError`` to say why it cannot)."""
    if experiment:
        return Decision(False, f"DVC experiment '{experiment}': experiments never move champion; "
                               "run `pretrainflow run` on the chosen params to promote")
    if require_lift and challenger.lift_points is None:
        return Decision(False, "no scratch baseline to compare with: set finetune.baseline: true "
                               "(or register.require_lift: false)")
    if require_lift and challenger.lift_points is not None and challenger.lift_points <= 0:
        return Decision(False, f"did not beat its own scratch baseline (lift {challenger.lift_points:+.2f} "
                               "points): pretraining did not pay off on this run")
    if champion is None:
        return Decision(True, f"first version to pass the gate ({metric} {challenger.score:.4f})")
    if champion.classes != challenger.classes:
        return Decision(False, f"a different task: classes {list(challenger.classes)} against the "
                               f"champion's {list(champion.classes)}; it never takes this model's "
                               "alias: set another register.model_name for this data")
    best, how = champion.score, "on the same test split"
    if champion.test_fingerprint != challenger.test_fingerprint:
        if rescore_champion is None:
            return Decision(False, "scored on a different test split than champion version "
                                   f"{champion.version}, which could not be re-scored: not compared")
        try:
            best, how = rescore_champion(), "re-scored on this run's test split"
        except ValueError as exc:
            return Decision(False, f"scored on a different test split than champion version "
                                   f"{champion.version}, and re-scoring it failed ({exc}): not compared")
    numbers = (f"{metric} {challenger.score:.4f} against champion version {champion.version}'s "
               f"{best:.4f} ({how}), required margin {min_improvement}")
    if challenger.score > best + min_improvement:
        return Decision(True, f"better: {numbers}", best)
    return Decision(False, f"not better by the margin: {numbers}", best)
