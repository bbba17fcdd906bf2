"""The ``pretrain:`` section of ``params.yaml``: the method, the encoder, its starting weights,
the optimiser and the views. ``pipeline_tasks.config`` holds it with the other sections."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline_tasks.recipes import ENCODERS, TIMM, init_misfit, timm_name

AUGMENT_OPS = ("crop_scale_min", "rotation_degrees", "hflip_prob", "jitter_prob", "brightness", "contrast",
               "saturation", "hue", "grayscale_prob", "blur_prob", "solarize_prob", "noise_std", "erase_prob")


class PretrainConfig(BaseModel):
    """The ``pretrain:`` section (``pipeline_tasks.config`` has the others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["simclr", "byol", "vicreg"] = "simclr"
    # compact: the width-multiplier ResNet for small images on a CPU; resnet18/34/50: torchvision's;
    # timm:<name>: any model of timm.list_models() (timm:convnext_atto, timm:tf_efficientnet_lite0)
    encoder: str = "compact"
    base_width: int = Field(16, ge=4)  # compact only
    # torchvision ResNets: 3x3 stride-1 stem, no max-pool; auto: on when data.image_size < 96 px
    small_stem: bool | Literal["auto"] = "auto"
    # Start from weights instead of random (models.starts resolves them, offline): a local file
    # (.pth/.pt/.safetensors: timm, torchvision or this project's encoder format), a registered
    # encoder (models:/pretrainflow-encoder/3), weights by name from the caches
    # (torchvision:resnet50[:IMAGENET1K_V2], timm:NAME[.TAG], hf-hub:ORG/REPO) or the ImageNet
    # start installed with the project, imagenet:efficientnet_lite0 (encoder timm:tf_efficientnet_lite0).
    init: str | None = None
    # Where pretraining starts when init is null: scratch (random weights, pretrain.encoder),
    # imagenet (the packaged ImageNet start: timm:tf_efficientnet_lite0 from
    # imagenet:efficientnet_lite0, whatever pretrain.encoder says) or auto: on 3-channel data the
    # start stage probes the run's labels (a logistic regression or k-NN on ImageNet features
    # against one on the pixels, chosen on the validation labels) and takes ImageNet when its
    # features beat the pixels by START_MARGIN; scratch on 1-channel data.
    start: Literal["auto", "scratch", "imagenet"] = "auto"
    allow_download: bool = False  # fetch weights by name missing from the caches
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=4)  # global, over all ranks
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(2e-3, gt=0)  # at batch 256; the run uses lr * batch_size / 256
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd and lars
    warmup_epochs: int = Field(1, ge=0)
    temperature: float = Field(0.5, gt=0)  # simclr
    projection_dim: int = Field(128, ge=8)
    target_momentum: float = Field(0.99, ge=0, lt=1)  # byol: EMA of the target, cosine to 1
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)  # invariance, variance, covariance
    # auto: bf16 on GPUs with native bf16, fp16 with a gradient scaler on older GPUs, fp32 on CPU
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False  # torch.compile the encoder (CUDA)
    # Augmentation: a preset, then any op set here (None keeps the preset's value).
    augment: Literal["digits", "simclr", "byol"] = "digits"
    crop_scale_min: float | None = Field(None, gt=0, le=1)
    rotation_degrees: float | None = Field(None, ge=0, le=180)
    hflip_prob: float | None = Field(None, ge=0, le=1)
    jitter_prob: float | None = Field(None, ge=0, le=1)
    brightness: float | None = Field(None, ge=0)
    contrast: float | None = Field(None, ge=0)
    saturation: float | None = Field(None, ge=0)
    hue: float | None = Field(None, ge=0, le=0.5)
    grayscale_prob: float | None = Field(None, ge=0, le=1)
    blur_prob: float | None = Field(None, ge=0, le=1)
    solarize_prob: float | None = Field(None, ge=0, le=1)
    noise_std: float | None = Field(None, ge=0)
    erase_prob: float | None = Field(None, ge=0, le=1)
    # Checkpoints (atomic) every epoch and every N steps; resume: auto continues the last one.
    checkpoint_every_steps: int | None = Field(None, ge=1)
    resume: Literal["auto", "never"] = "auto"
    knn_every_epochs: int = Field(5, ge=0)  # knn_accuracy_all_labels (0: at the end only)
    # Stop when the per-dimension std of L2-normalised embeddings falls under this share of the
    # 1/sqrt(dim) a spread-out embedding has (0 turns the check off).
    collapse_threshold: float = Field(0.05, ge=0, lt=1)
    log_every_steps: int = Field(50, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @field_validator("encoder")
    @classmethod
    def _a_known_encoder(cls, value: str) -> str:
        """``compact``, ``resnet18|34|50`` or ``timm:<name>`` of ``timm.list_models()`` (timm is
        imported only for a ``timm:`` name: the CLI reads the config before anything heavy)."""
        name = timm_name(value)
        if name is None:
            if value not in ENCODERS:
                raise ValueError(f"pretrain.encoder {value!r}: choose {', '.join(ENCODERS)} or "
                                 f"{TIMM}<model name>")
            return value
        import timm  # noqa: PLC0415 - imports torch

        if name not in timm.list_models():
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = (f"close matches: {', '.join(TIMM + c for c in close)}" if close
                    else "timm.list_models() lists the names")
            raise ValueError(f"pretrain.encoder {value}: timm has no model {name!r}; {hint}")
        return value

    @field_validator("init")
    @classmethod
    def _named_weights_fit_the_encoder(cls, value: str | None, info: ValidationInfo) -> str | None:
        encoder = info.data.get("encoder")
        misfit = init_misfit(value, encoder) if encoder else None
        if misfit:
            raise ValueError(misfit)
        return value

    @model_validator(mode="after")
    def _one_start(self) -> PretrainConfig:
        if self.start == "imagenet" and self.init:
            raise ValueError(f"pretrain.start: imagenet and pretrain.init: {self.init} name two starts; set "
                             "pretrain.init: null (or pretrain.start: scratch to start from init)")
        return self

    def augment_overrides(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in AUGMENT_OPS}
