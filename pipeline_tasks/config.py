"""Pipeline configuration: one pydantic model per ``params.yaml`` section.

Every model forbids unknown keys, so a misspelt key in ``params.yaml`` or in a
``--set section.key=value`` override is an error that names the key, not a silent no-op.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline_tasks.ssl.config import PretrainConfig


class ConfigError(ValueError):
    """A user-fixable problem with params.yaml or an override."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    dir: str = "data"  # the labeled images, <class>/<image>
    # Images without labels, in any folder layout, used only for pretraining (None: no pool).
    unlabeled_dir: str | None = None
    image_size: int = Field(28, ge=8, le=1024)
    # The training views' source: train and pool images also cached at this size, the random
    # crops cut from it and resized to image_size (None: image_size; never smaller).
    cache_size: int | None = Field(None, ge=8, le=2048)
    channels: Literal[1, 3] = 1
    # To a square: crop (shorter side to image_size, centre crop), pad (longer side, black
    # borders) or squash (both sides, aspect ratio lost).
    resize: Literal["crop", "pad", "squash"] = "crop"
    # Keep at most N images per class (quick runs on big folders); None keeps all.
    limit_per_class: int | None = Field(None, ge=1)

    @field_validator("cache_size")
    @classmethod
    def _cache_holds_the_training_size(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("image_size")
        if value is not None and size is not None and value < size:
            raise ValueError(f"data.cache_size {value} is smaller than data.image_size {size}: the cache "
                             f"must hold the training size; set data.cache_size to {size} or more, or null")
        return value


IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")


class ValidateConfig(_Section):
    min_classes: int = Field(2, ge=2)
    min_images_per_class: int = Field(10, ge=1)
    min_width: int = Field(8, ge=1)
    min_height: int = Field(8, ge=1)
    allowed_formats: tuple[str, ...] = IMAGE_FORMATS  # Pillow's format names
    # Largest class / smallest class; beyond this the small classes are drowned out.
    max_imbalance_ratio: float = Field(10.0, ge=1)
    # Distinct pictures (copy groups: a burst or a video's frames count once) each class needs.
    # A copy group never straddles splits, so fewer than 3 cannot give train, val and test one
    # each; a class with none in train would be fine-tuned on 0 labels.
    min_distinct_per_class: int = Field(3, ge=1)
    expected_classes: tuple[str, ...] | None = None  # the label set must equal this when given
    # fail: any bad file stops the run. skip_bad_files: leave bad files out (listed in the
    # report) and go on; files are never deleted or rewritten either way.
    on_error: Literal["fail", "skip_bad_files"] = "fail"

    @field_validator("expected_classes", mode="before")
    @classmethod
    def _class_names(cls, value: Any) -> Any:
        """Class names are folder names: numbers written without quotes (YAML reads ``[0, 1]``
        as integers) are taken as their text; anything else is one clear error."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError("expected_classes is a list of class folder names, e.g. ['cat', 'dog']")
        bad = [v for v in value if not isinstance(v, str | int) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"class names are folder names: write each in quotes, e.g. ['0', '1'] (found "
                             f"{bad})")
        return [str(v) for v in value]


class PreprocessConfig(_Section):
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = 42


class FinetuneConfig(_Section):
    # full: pretrained encoder + head, all trained; linear: frozen encoder, linear probe;
    # scratch: the same network from random weights.
    mode: Literal["full", "linear", "scratch"] = "full"
    # Also train the scratch baseline (same network, labels, recipe and steps) and report the lift.
    baseline: bool = True
    label_fraction: float = Field(0.01, gt=0, le=1)  # of the training split's labels
    # ...or this many labels of each class (all when a class has fewer); wins over label_fraction
    labels_per_class: int | None = Field(None, ge=1)
    # Validation labels per class used for model selection (None: the whole val split); they
    # are labels too, and count in labels_used.
    val_per_class: int | None = Field(10, ge=1)
    epochs: int = Field(30, ge=1)  # also the number of validation checks
    # At least this many optimisation steps, however small the labeled set (35 images at
    # batch 64 are one step an epoch).
    min_steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-2, gt=0)
    encoder_lr_scale: float = Field(0.1, gt=0, le=1)  # full mode: encoder lr = lr * this
    # Mild augmentation of the labeled images (and the pool stage's weak views): digits (no
    # flips, no colour), objects (grayscale objects such as Fashion-MNIST: digits + flips),
    # natural (RGB photos: flips, colour), none.
    augment: Literal["digits", "objects", "natural", "none"] = "digits"
    weight_decay: float = Field(1e-4, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA if native, fp32 on CPU
    seed: int = 0


class PoolConfig(_Section):
    """The pool stage (``finetune/pool.py``): after fine-tuning, learn from the unlabeled images."""

    # none | self_training (SimCLRv2 self-distillation) | fixmatch (Sohn et al. 2020). FixMatch
    # by default: on mnist-5k with 4 labels per class its validation accuracy rose from 0.85 to
    # 0.98, self-training's to 0.86 (on test: 0.82 to 0.95, and 0.78, below its start).
    method: Literal["none", "self_training", "fixmatch"] = "fixmatch"
    steps: int = Field(240, ge=1)
    labeled_batch: int = Field(32, ge=1)
    unlabeled_batch: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    unlabeled_weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)  # self_training: softmax(logits / T) as the targets
    # fixmatch: the confidence that makes a pseudo-label. 0.8, not the paper's 0.95: a model
    # fine-tuned on 40 labels is rarely that sure, and 0.95 left most of the pool unused.
    threshold: float = Field(0.8, gt=0, le=1)
    # fixmatch: fixed (pool.threshold for every class) | flexmatch (FlexMatch's per-class
    # thresholds, Zhang et al. 2021, with the paper's 0.95 as pool.threshold: lower for the
    # classes the model is still learning). On Fashion-MNIST with 10 labels per class flexmatch
    # at 0.95 scored 0.762 +- 0.010 over 3 seeds, fixed 0.8 0.775 +- 0.008.
    thresholds: Literal["fixed", "flexmatch"] = "fixed"
    checks: int = Field(8, ge=1)  # validation checks (model selection)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 0


class EvaluateConfig(_Section):
    batch_size: int = Field(512, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"


class RegisterConfig(_Section):
    model_name: str = Field("pretrainflow-classifier", min_length=1)
    metric: Literal["test_accuracy", "test_macro_f1"] = "test_accuracy"  # what the gate compares
    # The new version takes the champion alias only when it beats the champion by this much
    # (a practical margin, in the metric's units)...
    min_improvement: float = Field(0.0, ge=0)
    # ...and beyond noise: the paired test on the same test images (McNemar for accuracy, a
    # paired bootstrap for F1) below this p-value; the lift over scratch must pass it too.
    significance: float = Field(0.05, gt=0, le=1)
    # ...and only when it beat its own from-scratch baseline (needs finetune.baseline: true).
    require_lift: bool = True


class TrackingConfig(_Section):
    experiment: str = Field("pretrainflow", min_length=1)


class PipelineConfig(_Section):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    pool: PoolConfig = PoolConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    tracking: TrackingConfig = TrackingConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> PipelineConfig:
        p = self.preprocess
        if p.val_fraction + p.test_fraction >= 0.9:
            raise ValueError("preprocess.val_fraction + preprocess.test_fraction must be < 0.9")
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain dict (``validate`` by its YAML name)."""
        return dict(self.model_dump(by_alias=True)[name])

    def section_digest(self, *names: str) -> str:
        """Short stable hash of the named sections, or single keys as ``section.key`` (as
        ``dvc.yaml`` lists a stage's params): part of every cache key."""
        def value(name: str) -> Any:
            section, _, key = name.partition(".")
            return self.section(section)[key] if key else self.section(section)

        blob = json.dumps({n: value(n) for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for MLflow params."""
        return {
            f"{s}.{k}": v for s, sec in self.model_dump(by_alias=True).items() for k, v in sec.items()
        }


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"pretrain.lr=0.01"`` -> ``("pretrain", "lr", 0.01)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    section, dot, field = key.strip().partition(".")
    if not sep or not dot or not section or not field:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set pretrain.epochs=2")
    return section, field, yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Read ``params.yaml`` (or defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: params file not found; pass --params PATH to an existing file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc}); fix the syntax") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    for text in overrides:
        section, field, value = parse_override(text)
        if section not in _section_names():
            known = ", ".join(sorted(_section_names()))
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; known sections: {known}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        raw[section][field] = value
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def _section_names() -> list[str]:
    return [f.alias or n for n, f in PipelineConfig.model_fields.items()]


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = str(path) if path else "defaults"
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}: check its spelling against params.yaml")
        else:
            got = err.get("input")  # a section or the whole file (a cross-key check) is not repeated
            lines.append(f"{key}: {err['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return f"invalid configuration ({where} + --set overrides): " + "; ".join(lines)
