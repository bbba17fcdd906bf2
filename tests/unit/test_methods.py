"""Each SSL method learns (20 steps lower its loss) and trains end to end on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline_tasks.config import PipelineConfig, PretrainConfig
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.models.encoders import Encoder, EncoderSpec
from pipeline_tasks.models.weights import load_encoder
from pipeline_tasks.ssl.checkpoint import LAST
from pipeline_tasks.ssl.losses import byol_loss, vicreg_loss
from pipeline_tasks.ssl.methods import build_method
from pipeline_tasks.ssl.optim import LARS, param_groups
from pipeline_tasks.ssl.trainer import pretrain_encoder

METHODS = ["simclr", "byol", "vicreg"]


@pytest.mark.parametrize("name", METHODS)
def test_twenty_steps_lower_the_loss(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 1, 12, 12)
    method = build_method(name, Encoder(EncoderSpec(1, 4)), 32, PretrainConfig(projection_dim=16))
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:  # two noisy views of the same 32 random images
        return method(x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x))

    with torch.no_grad():
        first = float(torch.stack([loss() for _ in range(4)]).mean())
    for step in range(20):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        method.after_step((step + 1) / 20)
    with torch.no_grad():
        last = float(torch.stack([loss() for _ in range(4)]).mean())
    assert last < first * 0.9, (name, first, last)


def test_byol_target_follows_the_online_network_slowly() -> None:
    method = build_method("byol", Encoder(EncoderSpec(1, 4)), 32, PretrainConfig(target_momentum=0.9))
    before = [p.clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    method.after_step(0.0)  # tau = 0.9: the target moves 10% of the way
    moved = [float((a - b).abs().max()) for a, b in zip(method.target.parameters(), before, strict=True)]
    assert max(moved[: len(list(method.encoder.parameters()))]) == pytest.approx(0.1, rel=1e-4)
    assert not any(p.requires_grad for p in method.target.parameters())


def test_byol_and_vicreg_losses_by_hand() -> None:
    z = torch.randn(16, 8)
    assert byol_loss(z, z) == pytest.approx(0.0, abs=1e-6) and byol_loss(z, -z) == pytest.approx(4.0)
    assert vicreg_loss(z, z) < vicreg_loss(z, torch.randn(16, 8))
    collapsed = torch.ones(16, 8)
    assert vicreg_loss(collapsed, collapsed, (0.0, 1.0, 0.0)) == pytest.approx(1 - 1e-2, abs=1e-3)
    with pytest.raises(ValueError, match="both be"):
        vicreg_loss(torch.randn(4, 4), torch.randn(4, 5))


def test_lars_lowers_a_loss_and_skips_biases() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = LARS(param_groups(net, 1e-4), lr=1.0)
    assert [g.get("lars", True) for g in opt.param_groups] == [True, False]
    first = float(torch.nn.functional.mse_loss(net(x), y))
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first


@pytest.mark.parametrize("name", METHODS)
def test_a_run_checkpoints_each_epoch_and_retires_the_checkpoint_when_done(
        name: str, pre: PreprocessRecord, tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"method": name, "epochs": 2})
    seen = []

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        if step == 0 and "pretrain_loss" in metrics:  # after the first epoch's checkpoint
            seen.append(torch.load(tmp_path / "ckpt" / LAST, weights_only=True))

    rec = pretrain_encoder(pre.out_dir, cfg, tmp_path / "out", log_metrics, checkpoint_dir=tmp_path / "ckpt")
    assert seen[0]["epoch"] == 0 and seen[0]["step"] == 2 and "optimizer" in seen[0]  # 90 images, batch 32
    assert not (tmp_path / "ckpt" / LAST).exists()  # a finished run is never resumed
    assert rec.steps_trained == rec.total_steps == 4 and rec.images_seen == 4 * 2 * 32
    assert rec.runtime["device"] == "cpu" and rec.runtime["precision"] == "fp32"
    assert load_encoder(rec.encoder_path)(torch.zeros(1, 1, 28, 28)).shape == (1, 64)
    assert (tmp_path / "out" / "views.png").is_file() and torch.isfinite(torch.tensor(rec.final_loss))


def test_collapse_stops_the_run_with_a_clear_message(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_tasks.ssl import methods
    from pipeline_tasks.ssl.monitors import CollapseError, spread

    assert float(spread(torch.ones(16, 8))) == 0.0 and 0.8 < float(spread(torch.randn(512, 64))) < 1.2
    # every image mapped to one point: what a collapsed network outputs
    monkeypatch.setattr(methods.SimCLR, "watch", lambda self, z: setattr(
        self, "last_spread", spread(torch.ones_like(z))))
    with pytest.raises(CollapseError, match="collapsed.*pretrain.collapse_threshold"):
        pretrain_encoder(pre.out_dir, tiny_cfg.pretrain.model_copy(update={"epochs": 3}), tmp_path)
    assert not (tmp_path / "encoder.pt").exists()
