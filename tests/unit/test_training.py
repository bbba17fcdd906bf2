"""pretrain -> finetune -> evaluate on the tiny set through the real functions."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.cache import load_split_labels, open_images
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.evaluation.evaluate import evaluate_classifier
from pipeline_tasks.finetune.subsets import LABELS, labeled_subset, load_label_budget
from pipeline_tasks.finetune.train import finetune_classifier
from pipeline_tasks.models.classifier import load_classifier
from pipeline_tasks.models.inference import predict_logits
from pipeline_tasks.models.weights import load_encoder
from pipeline_tasks.ssl.optim import warmup_cosine
from pipeline_tasks.ssl.trainer import pretrain_encoder


@pytest.fixture(scope="module")
def encoder_path(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                 tmp_path_factory: pytest.TempPathFactory) -> str:
    logged: list[tuple[dict[str, float], int]] = []
    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 2})
    rec = pretrain_encoder(pre.out_dir, cfg, tmp_path_factory.mktemp("pt"),
                           lambda m, s: logged.append((m, s)))
    assert [s for _, s in logged] == [0, 1, 2]  # once per epoch, then the kNN monitor
    # the k-NN monitor scores the encoder's features against the labels: above chance (0.25 here)
    assert np.isfinite(rec.final_loss) and 2 / len(pre.classes) <= rec.knn_accuracy <= 1
    return rec.encoder_path


def test_encoder_checkpoint_reloads(encoder_path: str) -> None:
    enc = load_encoder(encoder_path)
    assert enc.spec.base_width == 8 and enc(torch.zeros(1, 1, 28, 28)).shape == (1, 64)


def test_warmup_cosine() -> None:
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(60) == pytest.approx(0.5) and f(110) == 0


def test_labeled_subset_is_stratified() -> None:
    y = torch.arange(10).repeat(20)
    idx = labeled_subset(y, 0.1, seed=0)
    assert torch.bincount(y[idx]).tolist() == [2] * 10
    assert torch.bincount(y[labeled_subset(y, 0.001, 0)]).tolist() == [1] * 10  # >= 1 per class


def test_finetune_then_evaluate(pre: PreprocessRecord, encoder_path: str, tiny_cfg: PipelineConfig,
                                tmp_path: Path) -> None:
    rec = finetune_classifier(pre.out_dir, encoder_path, pre.classes, tiny_cfg.finetune, tmp_path / "ft")
    per_class = np.bincount(np.load(Path(pre.out_dir) / "train_labels.npy"))
    assert rec.n_labeled == sum(max(1, round(n * 0.5)) for n in per_class)  # label_fraction 0.5, >= 1 a class
    model, classes = load_classifier(rec.classifier_path)
    assert classes == list(pre.classes)
    _, val_idx = load_label_budget(tmp_path / "ft" / LABELS)  # the saved model is the one selected
    val_y = load_split_labels(pre.out_dir, "val")[val_idx.numpy()]
    logits = predict_logits(model, open_images(pre.out_dir, "val")[val_idx.numpy()], torch.device("cpu"))
    assert (logits.argmax(1).numpy() == val_y).mean() == pytest.approx(rec.best_val_accuracy, abs=1e-6)
    ev = evaluate_classifier(pre.out_dir, rec.classifier_path, tiny_cfg.evaluate,
                             tmp_path / "metrics.json", tmp_path / "plots")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] == ev.test_accuracy and metrics["test_images"] == pre.n_test
    assert Image.open(ev.confusion_png).size[0] > 100
    predictions = pd.read_csv(tmp_path / "plots" / "predictions.csv", dtype=str)
    assert list(predictions.columns) == ["sha256", "actual", "predicted"] and len(predictions) == pre.n_test
    assert (predictions["sha256"].str.len() == 64).all()  # each test image named by its content
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(ev.test_accuracy)


def test_linear_probe_keeps_the_encoder(pre: PreprocessRecord, encoder_path: str,
                                        tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    cfg = tiny_cfg.finetune.model_copy(update={"mode": "linear"})
    rec = finetune_classifier(pre.out_dir, encoder_path, pre.classes, cfg, tmp_path)
    before = load_encoder(encoder_path).state_dict()
    after = load_classifier(rec.classifier_path)[0].encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory,
           tiny_cfg: PipelineConfig) -> tuple[PreprocessRecord, str]:
    """600 real digits (60 per class): 420 train, 60 val, 120 test; an encoder pretrained on
    the 420 for 2 epochs."""
    from pipeline_tasks.data.datasets import write_builtin
    from pipeline_tasks.data.manifest import build_manifest
    from pipeline_tasks.data.preprocess import preprocess_data

    root = tmp_path_factory.mktemp("digits")
    write_builtin("mnist-5k", root / "data", limit_per_class=60)
    build_manifest(root / "data").to_csv(root / "manifest.csv", index=False)
    pre = preprocess_data(root / "manifest.csv", root / "data", tiny_cfg.data, tiny_cfg.preprocess,
                          root / "pre")
    encoder = pretrain_encoder(pre.out_dir, tiny_cfg.pretrain.model_copy(update={"epochs": 2}), root / "pt")
    # the k-NN monitor sees features that already separate digits (chance 0.1; 0.38-0.43 over seeds)
    assert encoder.knn_accuracy > 0.25, encoder.knn_accuracy
    return pre, encoder.encoder_path


@pytest.mark.parametrize("mode", ["full", "linear", "scratch"])
def test_every_mode_learns_real_digits(digits: tuple[PreprocessRecord, str], tiny_cfg: PipelineConfig,
                                       mode: str, tmp_path: Path) -> None:
    """Fails when training does not learn: 10 classes, so chance is 0.1."""
    pre, encoder = digits
    cfg = tiny_cfg.finetune.model_copy(update={"label_fraction": 1.0, "min_steps": 150, "epochs": 5,
                                               "batch_size": 64, "lr": 0.01, "encoder_lr_scale": 0.1})
    losses: list[float] = []
    rec = finetune_classifier(pre.out_dir, encoder, pre.classes, cfg, tmp_path,
                              lambda m, step: losses.append(m["finetune_loss"]), mode=mode)
    accuracy = evaluate_classifier(pre.out_dir, rec.classifier_path, tiny_cfg.evaluate,
                                   tmp_path / "m.json", tmp_path / "plots").test_accuracy
    assert rec.steps == 150 and len(losses) == 5 and losses[-1] < losses[0] * 0.7
    # a frozen encoder pretrained for 2 epochs on 420 digits limits the probe; training every
    # layer on 420 labels does better
    assert accuracy > (0.45 if mode == "linear" else 0.7), f"{mode}: test accuracy {accuracy}"


@pytest.mark.parametrize(("method", "thresholds"), [("self_training", "fixed"), ("fixmatch", "fixed"),
                                                    ("fixmatch", "flexmatch")])
def test_the_pool_stage_learns_from_unlabeled_images(digits: tuple[PreprocessRecord, str],
                                                     tiny_cfg: PipelineConfig, method: str, thresholds: str,
                                                     tmp_path: Path) -> None:
    """From a classifier fine-tuned on 2 labels per class, the pool stage trains on the other
    training digits without their labels; the model it keeps is the best on validation."""
    from pipeline_tasks.finetune.pool import learn_from_pool
    from pipeline_tasks.finetune.subsets import LABELS

    pre, encoder = digits
    cfg = tiny_cfg.finetune.model_copy(update={"label_fraction": 2 / 42, "min_steps": 60, "val_per_class": 6})
    start = finetune_classifier(pre.out_dir, encoder, pre.classes, cfg, tmp_path)
    logged: list[dict[str, float]] = []
    pool_cfg = tiny_cfg.pool.model_copy(update={"method": method, "steps": 30, "checks": 3,
                                                "thresholds": thresholds, "unlabeled_batch": 64,
                                                "threshold": 0.5})
    rec = learn_from_pool(pre.out_dir, start.classifier_path, pool_cfg, tmp_path / LABELS,
                          tmp_path / "pool.pt", cfg.augment, lambda m, step: logged.append(m))
    assert rec.method == method and rec.pool_images == pre.n_train and rec.steps == 30
    # it starts from fine-tuning's best model
    assert rec.start_val_accuracy == pytest.approx(start.best_val_accuracy)
    assert len(logged) == 3 and all(0 <= m["pool_used_share"] <= 1 for m in logged)
    checks = [start.best_val_accuracy, *(m["pool_val_accuracy"] for m in logged)]
    assert rec.best_val_accuracy == max(checks)  # the best check is kept ...
    _, val = load_label_budget(tmp_path / LABELS)
    after = load_classifier(rec.classifier_path)[0]
    saved = predict_logits(after, open_images(pre.out_dir, "val")[val.numpy()], torch.device("cpu")).argmax(1)
    truth = torch.from_numpy(load_split_labels(pre.out_dir, "val")[val.numpy()])
    assert float((saved == truth).float().mean()) == pytest.approx(rec.best_val_accuracy)  # ... and saved
    before = load_classifier(start.classifier_path)[0]
    changed = any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(),
                                                        after.state_dict().values(), strict=True))
    assert changed == (rec.best_step > 0)  # the stage's best model is what it saved


def test_flexmatch_lowers_the_bar_for_a_class_the_model_has_not_learnt() -> None:
    """FlexMatch (Zhang et al. 2021): 6 of 10 pool images are confidently class 0 and none class
    1, so class 1's threshold falls to 0.95 * 0 and class 0's stays 0.95; a fixed threshold
    takes neither 0.6-confident prediction."""
    from pipeline_tasks.config import PoolConfig
    from pipeline_tasks.finetune.pool import PseudoLabels

    cfg, cpu = PoolConfig(threshold=0.95, thresholds="flexmatch"), torch.device("cpu")
    flexmatch = PseudoLabels(cfg, 10, 2, cpu)
    pseudo, mask = flexmatch(torch.tensor([[0.99, 0.01]] * 6), torch.arange(6))
    assert pseudo.tolist() == [0] * 6 and mask.tolist() == [1.0] * 6  # warm-up: nothing learnt yet, no bar
    unsure, rows = torch.tensor([[0.6, 0.4], [0.4, 0.6]]), torch.tensor([6, 7])
    pseudo, mask = flexmatch(unsure, rows)
    assert pseudo.tolist() == [0, 1] and mask.tolist() == [0.0, 1.0]
    fixed = PseudoLabels(cfg.model_copy(update={"thresholds": "fixed"}), 10, 2, cpu)
    assert fixed(unsure, rows)[1].tolist() == [0.0, 0.0]


def test_of_equal_validation_checks_the_pool_stage_keeps_the_later(
        digits: tuple[PreprocessRecord, str], tiny_cfg: PipelineConfig, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100-image validation split ties often; the later check has seen more of the pool."""
    from pipeline_tasks.finetune import pool
    from pipeline_tasks.finetune.subsets import LABELS

    pre, encoder = digits
    cfg = tiny_cfg.finetune.model_copy(update={"label_fraction": 2 / 42, "min_steps": 20, "val_per_class": 6})
    start = finetune_classifier(pre.out_dir, encoder, pre.classes, cfg, tmp_path)
    monkeypatch.setattr(pool, "_val_accuracy", lambda *args: 0.5)  # every check ties with the start
    pool_cfg = tiny_cfg.pool.model_copy(update={"method": "fixmatch", "steps": 6, "checks": 3,
                                                "unlabeled_batch": 16})
    rec = pool.learn_from_pool(pre.out_dir, start.classifier_path, pool_cfg, tmp_path / LABELS,
                               tmp_path / "pool.pt", cfg.augment, lambda m, step: None)
    assert rec.best_step == 6


@pytest.mark.parametrize("augment", ["digits", "objects", "natural", "none"])
def test_the_pool_stage_flips_and_colours_where_fine_tuning_does(
        digits: tuple[PreprocessRecord, str], tiny_cfg: PipelineConfig, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, augment: str) -> None:
    """The pool stage's weak view is fine-tuning's own (``finetune.augment``) and its strong view
    flips and colours exactly where that one does: a mirrored shoe is a shoe, a mirrored 3 is not."""
    from pipeline_tasks.finetune import pool
    from pipeline_tasks.finetune.views import FINETUNE_AUGMENT
    from pipeline_tasks.ssl.views import ViewAugment

    pre, encoder = digits
    cfg = tiny_cfg.finetune.model_copy(update={"label_fraction": 2 / 42, "min_steps": 2, "epochs": 2,
                                               "val_per_class": 2, "augment": augment})
    start = finetune_classifier(pre.out_dir, encoder, pre.classes, cfg, tmp_path)
    used: list[ViewAugment] = []
    real_call = ViewAugment.__call__
    monkeypatch.setattr(ViewAugment, "__call__",
                        lambda self, *args, **kw: used.append(self) or real_call(self, *args, **kw))
    pool_cfg = tiny_cfg.pool.model_copy(update={"method": "fixmatch", "steps": 2, "checks": 1,
                                                "unlabeled_batch": 8})
    pool.learn_from_pool(pre.out_dir, start.classifier_path, pool_cfg, tmp_path / LABELS,
                         tmp_path / "pool.pt", cfg.augment)
    weak = FINETUNE_AUGMENT["digits" if augment == "none" else augment]
    strong = [view for view in set(used) if view != weak]
    assert weak in used and len(strong) == 1, "one weak and one strong view"
    assert strong[0].hflip_prob == weak.hflip_prob == (0.5 if augment in ("objects", "natural") else 0.0)
    assert (strong[0].saturation > weak.saturation > 0) == (augment == "natural")
    assert strong[0].crop_scale_min < weak.crop_scale_min and strong[0].erase_prob > weak.erase_prob


def test_reference_points_are_fitted_on_the_labels_and_chosen_on_validation() -> None:
    from pipeline_tasks.evaluation.references import Split, best_of, reference_points

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 3

    def split(n: int) -> Split:
        y = rng.integers(0, 3, n)
        return Split(centres[y] + rng.normal(size=(n, 20)), y)

    noise = [Split(rng.normal(size=(len(s.y), 20)), s.y) for s in (split(30), split(30), split(300))]
    found = reference_points((split(30), split(30), split(300)), tuple(noise))  # type: ignore[arg-type]
    by_name = {r.name: r for r in found}
    assert by_name["pixels_logreg"].test_accuracy > 0.9 and by_name["pixels_knn"].test_accuracy > 0.9
    assert by_name["encoder_linear"].test_accuracy < 0.6  # features without information
    best = best_of(found, "pixels")
    assert best is not None and best.val_accuracy == max(r.val_accuracy for r in found if "pixels" in r.name)
