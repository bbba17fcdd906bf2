"""The promotion gate's rules, one case each (the MLflow side is in test_registry.py)."""

import pytest

from flows.gate import Scored, decide

CLASSES = ("0", "1", "2")


def challenger(score: float = 0.9, split: str = "split-a", lift: float | None = 5.0,
               classes: tuple[str, ...] = CLASSES) -> Scored:
    return Scored("2", score, split, classes, lift)


CHAMPION = Scored("1", 0.85, "split-a", CLASSES)


def test_first_version_that_beats_scratch_is_promoted() -> None:
    d = decide(challenger(), None, "test_accuracy", 0.0)
    assert d.promote and "first version" in d.reason


def test_better_by_the_margin_is_promoted_with_the_numbers() -> None:
    d = decide(challenger(0.9), CHAMPION, "test_accuracy", 0.01)
    assert d.promote and d.champion_score == 0.85
    assert "0.9000" in d.reason and "0.8500" in d.reason and "same test split" in d.reason


@pytest.mark.parametrize("score", [0.85, 0.855])
def test_not_better_by_the_margin_is_refused(score: float) -> None:
    d = decide(challenger(score), CHAMPION, "test_accuracy", 0.01)
    assert not d.promote and "not better by the margin" in d.reason and "0.01" in d.reason


@pytest.mark.parametrize("lift", [0.0, -3.5])
def test_a_model_that_does_not_beat_scratch_is_refused(lift: float) -> None:
    d = decide(challenger(0.99, lift=lift), CHAMPION, "test_accuracy", 0.0)
    assert not d.promote and "scratch baseline" in d.reason


def test_no_baseline_is_refused_unless_the_lift_is_not_required() -> None:
    assert not decide(challenger(lift=None), None, "test_accuracy", 0.0).promote
    assert decide(challenger(lift=None), None, "test_accuracy", 0.0, require_lift=False).promote


def test_another_class_set_never_takes_the_alias() -> None:
    d = decide(challenger(0.99, classes=("cat", "dog")), CHAMPION, "test_accuracy", 0.0)
    assert not d.promote and "different task" in d.reason and "register.model_name" in d.reason


def test_a_different_test_split_is_rescored_never_compared_silently() -> None:
    calls: list[int] = []

    def rescore() -> float:
        calls.append(1)
        return 0.95  # the champion is better on this run's split than the tags said

    d = decide(challenger(0.9, split="split-b"), CHAMPION, "test_accuracy", 0.0,
               rescore_champion=rescore)
    assert calls and not d.promote and "re-scored on this run's test split" in d.reason
    assert d.champion_score == 0.95


def test_a_different_test_split_that_cannot_be_rescored_is_refused() -> None:
    def rescore() -> float:
        raise ValueError("model files missing")

    d = decide(challenger(0.99, split="split-b"), CHAMPION, "test_accuracy", 0.0,
               rescore_champion=rescore)
    assert not d.promote and "different test split" in d.reason and "model files missing" in d.reason
    assert not decide(challenger(0.99, split="split-b"), CHAMPION, "test_accuracy", 0.0).promote


def test_a_dvc_experiment_never_moves_champion() -> None:
    d = decide(challenger(0.99), None, "test_accuracy", 0.0, experiment="quick-fox")
    assert not d.promote and "quick-fox" in d.reason
