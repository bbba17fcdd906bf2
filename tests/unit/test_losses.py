import pytest
import torch

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
