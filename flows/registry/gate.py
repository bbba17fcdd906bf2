"""The promotion gate as a pure function: may this version take the ``champion`` alias?

A challenger takes ``champion`` only when all of these hold:

1. the run is not a DVC experiment (``dvc exp run`` explores; it never promotes);
2. pretraining paid off beyond noise: the pretraining lift (this model against the same
   network from scratch, through the same pool stage, on the same labels and steps) is above 0
   and McNemar's test on the same test images below ``register.significance``
   (``register.require_lift: false`` lifts this);
3. it solves the same task as the champion (the same class names);
4. the champion was re-scored on the challenger's test images, leaving out every image the
   champion trained, pretrained or was selected on (how many is said), and
5. on those images the challenger beats the champion on ``register.metric`` by more than
   ``register.min_improvement`` (a practical margin) and beyond noise: the paired test's
   p-value below ``register.significance`` (McNemar for accuracy, a paired bootstrap for F1).

A margin of 0 without a test would promote noise: one seed moves the default run by 3-5 points.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_tasks.evaluation.compare import PairedTest


@dataclass(frozen=True)
class Challenger:
    version: str
    classes: tuple[str, ...]
    score: float  # register.metric on its whole test split
    lift_points: float | None = None  # pretraining's lift over its like-for-like scratch baseline
    lift_p_value: float | None = None  # McNemar, one-sided, on the same test images


@dataclass(frozen=True)
class Comparison:
    """The champion against the challenger on the test images the champion never saw."""

    champion_version: str
    champion_classes: tuple[str, ...]
    paired: PairedTest  # A = challenger, B = champion
    n_excluded: int  # test images left out: the champion trained, pretrained or was selected on them
    note: str = ""  # e.g. the champion had no tag for register.metric


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_version: str | None  # the champion the decision was made against (compare-and-set)
    p_value: float | None = None  # of the test that decided, when one did


def _lift_refusal(c: Challenger, significance: float) -> str | None:
    if c.lift_points is None:
        return ("no scratch baseline to compare with: set finetune.baseline: true (or "
                "register.require_lift: false)")
    if c.lift_points <= 0:
        return (f"did not beat the same network from scratch (pretraining lift {c.lift_points:+.2f} points): "
                "pretraining did not pay off on this run")
    if c.lift_p_value is not None and c.lift_p_value >= significance:
        return (f"its pretraining lift ({c.lift_points:+.2f} points) is within noise: McNemar p = "
                f"{c.lift_p_value:.3g}, not below register.significance {significance}")
    return None


def decide(challenger: Challenger, champion: Comparison | str | None, metric: str, min_improvement: float,
           significance: float = 0.05, require_lift: bool = True, experiment: str | None = None) -> Decision:
    """Apply the rules above. ``champion``: the comparison on shared images, ``None`` when there
    is no champion, or a sentence saying why the champion could not be compared."""
    versus = champion.champion_version if isinstance(champion, Comparison) else None
    if experiment:
        return Decision(False, f"DVC experiment '{experiment}': experiments never move champion; run "
                               "`pretrainflow run` on the chosen params to promote", versus)
    if require_lift and (why := _lift_refusal(challenger, significance)):
        return Decision(False, why, versus, challenger.lift_p_value)
    if champion is None:
        return Decision(True, f"first version to pass the gate ({metric} {challenger.score:.4f})", None)
    if isinstance(champion, str):
        return Decision(False, f"not compared with the champion: {champion}", None)
    if champion.champion_classes != challenger.classes:
        return Decision(False, f"a different task: classes {list(challenger.classes)} against the "
                               f"champion's {list(champion.champion_classes)}; it never takes this model's "
                               "alias: set another register.model_name for this data", versus)
    return _versus(champion, metric, min_improvement, significance)


def _versus(c: Comparison, metric: str, min_improvement: float, significance: float) -> Decision:
    p = c.paired
    numbers = (f"{metric} {p.score_a:.4f} against champion version {c.champion_version}'s {p.score_b:.4f} on "
               f"the same {p.n} test images ({c.n_excluded} left out that the champion trained or pretrained "
               f"on); {p.test} p = {p.p_value:.3g} (register.significance {significance}), required margin "
               f"{min_improvement}{'; ' + c.note if c.note else ''}")
    if p.score_a - p.score_b <= min_improvement:
        return Decision(False, f"not better by the margin: {numbers}", c.champion_version, p.p_value)
    if p.p_value >= significance:
        return Decision(False, f"better, but not beyond noise: {numbers}", c.champion_version, p.p_value)
    return Decision(True, f"better beyond noise: {numbers}", c.champion_version, p.p_value)
