from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pipeline_tasks.ssl.losses import nt_xent


def test_twenty_steps_make_the_loss_go_down() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    net = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    noisy = lambda: x + 0.3 * torch.randn_like(x)  # noqa: E731 - two "views" of each row
    first = nt_xent(net(noisy()), net(noisy())).item()
    for _ in range(20):
        loss = nt_xent(net(noisy()), net(noisy()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.2


def test_matching_views_score_better_than_random() -> None:
    z = torch.randn(16, 8)
    assert nt_xent(z, z) < nt_xent(z, torch.randn(16, 8))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="both be"):
        nt_xent(torch.randn(4, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 4), torch.randn(4, 4), temperature=0)


@pytest.mark.parametrize("loss", ["nt_xent", "vicreg"])
def test_two_ranks_with_gathered_negatives_compute_the_one_process_loss(loss: str) -> None:
    """What DDP must equal: the mean over 2 ranks of each rank's loss, its shard's embeddings
    with every rank's gathered (negatives, variance, covariance), is the loss of one process on
    the whole batch, to float precision (a tolerance of percents would hide lost negatives)."""
    from pipeline_tasks.ssl.losses import nt_xent, vicreg_loss

    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    shards = [(z1[:8], z2[:8]), (z1[8:], z2[8:])]

    def per_rank(fn: Any) -> float:
        total = torch.zeros(())
        for rank, (a, b) in enumerate(shards):
            def gather(x: torch.Tensor, rank: int = rank) -> torch.Tensor:
                # every rank's tensor as that rank computed it; this rank's with its gradient
                return torch.cat([x if r == rank else fn.prepare(*shards[r], x) for r in range(2)])
            total = total + fn.run(a, b, gather, rank)
        return float(total / 2)

    if loss == "nt_xent":
        fn = SimpleNamespace(prepare=lambda a, b, x: F.normalize(torch.cat([a, b]).float(), dim=1),
                             run=lambda a, b, g, r: nt_xent(a, b, 0.5, g, r))
        whole = float(nt_xent(z1, z2, 0.5))
    else:
        calls: list[int] = []

        def prepare(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)  # vicreg gathers z1, then z2: the same view of the other shard
            return (a if len(calls) % 2 else b).float()

        fn = SimpleNamespace(prepare=prepare, run=lambda a, b, g, r: vicreg_loss(a, b, gather=g))
        whole = float(vicreg_loss(z1, z2))
    assert per_rank(fn) == pytest.approx(whole, rel=1e-6, abs=1e-6)
