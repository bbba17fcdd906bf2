"""The promotion gate's rules, one case each (the MLflow side is in test_registry.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.registry.gate import Challenger, Comparison, decide
from pipeline_tasks.data.splits import split_fingerprint
from pipeline_tasks.evaluation.compare import macro_f1_rows, mcnemar, paired_bootstrap
from pipeline_tasks.evaluation.metrics import macro_f1

CLASSES = ("0", "1", "2")


def challenger(lift: float | None = 5.0, lift_p: float | None = 0.001,
               classes: tuple[str, ...] = CLASSES) -> Challenger:
    return Challenger("2", classes, 0.9, lift, lift_p)


def versus(ours_right: int, theirs_right: int, n: int = 1000, excluded: int = 0) -> Comparison:
    """The challenger right on ``ours_right`` of ``n`` shared images, the champion on
    ``theirs_right``; they agree on every other image."""
    both = min(ours_right, theirs_right)
    ours = np.zeros(n, bool)
    theirs = np.zeros(n, bool)
    ours[:ours_right], theirs[:both] = True, True
    theirs[ours_right:ours_right + theirs_right - both] = True
    return Comparison("1", CLASSES, mcnemar(ours, theirs), excluded)


def test_first_version_that_beats_scratch_beyond_noise_is_promoted() -> None:
    d = decide(challenger(), None, "test_accuracy", 0.0)
    assert d.promote and "first version" in d.reason and d.champion_version is None


def test_three_more_right_of_a_thousand_is_noise() -> None:
    """0.3 points better on 1,000 test images: McNemar p = 0.125, not promoted."""
    c = versus(803, 800)
    assert c.paired.difference_points == pytest.approx(0.3) and c.paired.p_value == pytest.approx(0.125)
    d = decide(challenger(), c, "test_accuracy", 0.0)
    assert not d.promote and "not beyond noise" in d.reason and "p = 0.125" in d.reason
    assert d.p_value == pytest.approx(0.125) and d.champion_version == "1"


def test_clearly_better_is_promoted_with_the_numbers() -> None:
    d = decide(challenger(), versus(850, 800, excluded=12), "test_accuracy", 0.01)
    assert d.promote and "better beyond noise" in d.reason and d.p_value < 1e-10
    assert "0.8500" in d.reason and "0.8000" in d.reason and "12 left out" in d.reason


def test_the_margin_applies_on_top_of_significance() -> None:
    d = decide(challenger(), versus(850, 800), "test_accuracy", 0.06)
    assert not d.promote and "not better by the margin" in d.reason and "0.06" in d.reason


@pytest.mark.parametrize(("lift", "p", "why"), [(0.0, 0.5, "did not beat the same network from scratch"),
                                               (-3.5, 0.9, "pretraining lift -3.50"),
                                               (2.0, 0.2, "within noise: McNemar p = 0.2")])
def test_a_model_that_does_not_beat_scratch_beyond_noise_is_refused(lift: float, p: float, why: str) -> None:
    d = decide(challenger(lift, p), None, "test_accuracy", 0.0)
    assert not d.promote and why in d.reason


def test_no_baseline_is_refused_unless_the_lift_is_not_required() -> None:
    assert not decide(challenger(None, None), None, "test_accuracy", 0.0).promote
    assert decide(challenger(None, None), None, "test_accuracy", 0.0, require_lift=False).promote


def test_another_class_set_never_takes_the_alias() -> None:
    d = decide(challenger(classes=("cat", "dog")), versus(900, 100), "test_accuracy", 0.0)
    assert not d.promote and "different task" in d.reason and "register.model_name" in d.reason


def test_a_champion_that_cannot_be_compared_is_never_beaten_silently() -> None:
    d = decide(challenger(), "champion version 1 records no list of the images it was trained on",
               "test_accuracy", 0.0)
    assert not d.promote and "not compared with the champion: champion version 1 records" in d.reason


def test_dvc_experiments_never_promote() -> None:
    d = decide(challenger(), None, "test_accuracy", 0.0, experiment="quick-fox")
    assert not d.promote and "quick-fox" in d.reason


def test_the_paired_bootstrap_separates_noise_from_a_real_difference() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    champion = np.where(rng.random(600) < 0.8, y, (y + 1) % 3)
    close = champion.copy()
    close[np.flatnonzero(champion != y)[:2]] = y[np.flatnonzero(champion != y)[:2]]
    better = np.where(rng.random(600) < 0.95, y, champion)

    assert paired_bootstrap(y, close, champion, 3).p_value > 0.05
    assert paired_bootstrap(y, better, champion, 3).p_value < 0.01
    for pred in (close, better, champion):  # the vectorised F1 is scikit-learn's
        assert macro_f1_rows(y, pred, 4) == pytest.approx(macro_f1(y, pred, 4))
    rows = np.stack([y, close, better])
    assert macro_f1_rows(rows, np.stack([champion] * 3), 3) == pytest.approx(
        [macro_f1(truth, champion, 3) for truth in rows])


# The figures of the gate's tests before they came from statsmodels' and scipy's resampling, on
# one seeded example: McNemar's counts and p-values, the hand-written bootstrap's p-values.
RNG_EXAMPLE = {"mcnemar": [(85, 56, 0.009028072526350477), (56, 85, 0.9943715294785205)],
               "bootstrap": [0.0034982508745627187, 0.9970014992503748]}


def test_the_paired_tests_agree_with_the_previous_figures_and_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    a = np.where(rng.random(500) < 0.8, y, rng.integers(0, 5, 500))
    b = np.where(rng.random(500) < 0.75, y, rng.integers(0, 5, 500))
    for (first, second), (a_only, b_only, p) in zip(((a, b), (b, a)), RNG_EXAMPLE["mcnemar"], strict=True):
        found = mcnemar(first == y, second == y)
        assert (found.a_only, found.b_only) == (a_only, b_only)
        assert found.p_value == pytest.approx(p, rel=1e-9)
    both = [[int(((a == y) & (b == y)).sum()), 85], [56, int(((a != y) & (b != y)).sum())]]
    assert statsmodels_mcnemar(both, exact=True).pvalue == pytest.approx(2 * RNG_EXAMPLE["mcnemar"][0][2])
    for (first, second), before in zip(((a, b), (b, a)), RNG_EXAMPLE["bootstrap"], strict=True):
        now = paired_bootstrap(y, first, second, 5).p_value  # other resamples: within 3 standard errors
        assert abs(now - before) < 3 * np.sqrt(max(before * (1 - before), 1e-3) / 2000), (now, before)


def test_a_relabelled_test_split_is_another_split() -> None:
    splits = pd.DataFrame({"sha256": ["a", "b", "c"], "label": ["cat", "dog", "cat"], "split": ["test"] * 3})
    relabelled = splits.assign(label=["cat", "cat", "cat"])
    assert split_fingerprint(splits) != split_fingerprint(relabelled)
    assert split_fingerprint(splits) == split_fingerprint(splits.iloc[::-1])  # order does not matter
