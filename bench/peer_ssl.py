"""Our SimCLR engine against the MIT-licensed lightly library's, on the same pool, the same
encoder and the same wall-clock budget: views/s, and the k-NN and linear-probe accuracy of both
encoders with the same labels (chosen on validation, scored on test).

    pip install -e '.[bench]'      # lightly: bench-only, not a dependency of the pipeline
    python bench/peer_ssl.py                       # mnist-5k, 240 s each
    python bench/peer_ssl.py --data fashion --seconds 600

lightly runs as its documentation sets it up: ``SimCLRTransform`` (its small-image settings:
no Gaussian blur under 32 px; no flips or colour for grayscale digits, as ours), a
``DataLoader`` with workers over PIL images, ``SimCLRProjectionHead`` and ``NTXentLoss`` at
its default temperature 0.5; ours runs ``pretrain_encoder`` with the ``digits`` preset. Both
train params.yaml's compact ResNet with the same optimiser (AdamW, lr and batch from
params.yaml), one after the other, each until the budget runs out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.label_efficiency import prepare  # noqa: E402
from pipeline_tasks.config import load_config  # noqa: E402
from pipeline_tasks.data.cache import load_split_labels, open_images  # noqa: E402
from pipeline_tasks.evaluation.references import Split, knn, logistic_regression  # noqa: E402
from pipeline_tasks.finetune.subsets import stratified_subset  # noqa: E402
from pipeline_tasks.models.encoders import Encoder, EncoderSpec  # noqa: E402
from pipeline_tasks.models.inference import embed  # noqa: E402
from pipeline_tasks.models.weights import load_encoder  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_lightly(pre: Path, spec: EncoderSpec, seconds: float, batch: int,
                  lr: float) -> tuple[Encoder, float]:
    """lightly's SimCLR on the cached training images until ``seconds`` pass; returns the
    encoder and its views/s."""
    from lightly.loss import NTXentLoss  # noqa: PLC0415 - bench-only
    from lightly.models.modules import SimCLRProjectionHead  # noqa: PLC0415
    from lightly.transforms import SimCLRTransform  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    images = np.asarray(open_images(pre, "train"))
    size = images.shape[-1]
    transform = SimCLRTransform(input_size=size, gaussian_blur=0.0, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0,
                                cj_prob=0.8, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0, min_scale=0.4,
                                normalize={"mean": [0.5], "std": [0.5]})

    class Views(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> list[torch.Tensor]:
            return transform(Image.fromarray(images[i, 0]))

    encoder = Encoder(spec)
    head = SimCLRProjectionHead(encoder.feature_dim, encoder.feature_dim, 128)
    model = torch.nn.Sequential(encoder, head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr * batch / 256, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(Views(), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=2, persistent_workers=True)
    loss_fn, views, start = NTXentLoss(temperature=0.5), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for view_a, view_b in loader:
            loss = loss_fn(model(view_a), model(view_b))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            views += 2 * len(view_a)
            if time.perf_counter() - start >= seconds:
                break
    return encoder.eval(), views / (time.perf_counter() - start)


def probe(encoder: torch.nn.Module, pre: Path, per_class: int) -> tuple[float, float]:
    """``(k-NN, linear probe)`` test accuracy with ``per_class`` training labels of each class."""
    labels = {s: load_split_labels(pre, s) for s in ("train", "val", "test")}
    train_idx = stratified_subset(torch.from_numpy(labels["train"]), 0, per_class=per_class).numpy()
    splits = []
    for name, idx in (("train", train_idx), ("val", None), ("test", None)):
        rows = np.arange(len(labels[name])) if idx is None else idx
        feats = embed(encoder, np.array(open_images(pre, name))[rows], torch.device("cpu"), normalize=False)
        splits.append(Split(feats.numpy(), labels[name][rows]))
    return knn("knn", *splits).test_accuracy, logistic_regression("linear", *splits).test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["fashion", "mnist-5k"], default="mnist-5k")
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=240.0, help="wall-clock budget of each engine")
    parser.add_argument("--labels-per-class", type=int, default=100,
                        help="labels for the k-NN and linear probes")
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", ["pretrain.device=cpu", "pretrain.knn_every_epochs=0"])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp)
        print(prepare(args, pre), flush=True)
        n = len(open_images(pre, "train"))
        steps_per_epoch = n // cfg.pretrain.batch_size
        ours_rate = _our_rate(pre, cfg, steps_per_epoch)
        epochs = max(1, int(args.seconds * ours_rate / (2 * cfg.pretrain.batch_size * steps_per_epoch)))
        start = time.perf_counter()
        ours = pretrain_encoder(pre, cfg.pretrain.model_copy(update={"epochs": epochs}), pre / "ours")
        ours_seconds = time.perf_counter() - start
        spec = load_encoder(ours.encoder_path).spec
        theirs, theirs_rate = train_lightly(pre, spec, ours_seconds, cfg.pretrain.batch_size, cfg.pretrain.lr)
        mine = load_encoder(ours.encoder_path)
        rows = {"ours": (ours.views_per_second, *probe(mine, pre, args.labels_per_class)),
                "lightly": (theirs_rate, *probe(theirs, pre, args.labels_per_class))}
    print(f"\nsame encoder ({spec.arch}, width {spec.base_width}), {ours_seconds:.0f} s each on this CPU, "
          f"{args.labels_per_class} labels per class for the probes")
    print(f"{'engine':<8} {'views/s':>8} {'k-NN':>7} {'linear':>7}")
    for name, (rate, knn_acc, linear_acc) in rows.items():
        print(f"{name:<8} {rate:>8.0f} {knn_acc:>7.4f} {linear_acc:>7.4f}")
    print(f"views/s ratio ours / lightly: {rows['ours'][0] / rows['lightly'][0]:.2f}x")


def _our_rate(pre: Path, cfg: object, steps_per_epoch: int) -> float:
    """Our views/s from one short epoch, to size our run to the budget."""
    probe_run = pretrain_encoder(pre, cfg.pretrain.model_copy(update={"epochs": 1}), pre / "probe")  # type: ignore[attr-defined]
    return float(probe_run.views_per_second)


if __name__ == "__main__":
    main()
