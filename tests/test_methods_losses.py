"""The sync-free losses (methods/losses.py) equal lightly's, value and gradient."""
import pytest
import torch
from lightly.loss import NTXentLoss as LightlyNTXent, VICRegLoss as LightlyVICReg

from ssl_derm.methods.losses import NTXentLoss, VICRegLoss, covariance_loss


def _pair(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, requires_grad=True), torch.randn(b, d, generator=g, requires_grad=True))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_equals_lightly(temperature):
    a, b = _pair()
    ours = NTXentLoss(temperature)(a, b)
    ga = torch.autograd.grad(ours, [a, b])
    theirs = LightlyNTXent(temperature)(a, b)
    gb = torch.autograd.grad(theirs, [a, b])
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb))


def test_vicreg_equals_lightly():
    a, b = _pair(8, 6)
    kw = dict(lambda_param=25.0, mu_param=25.0, nu_param=1.0)
    assert float(VICRegLoss(**kw)(a, b)) == pytest.approx(float(LightlyVICReg(**kw)(a, b)), rel=1e-6)
    x = torch.randn(8, 3, 6)  # (batch, ..., dim) too
    from lightly.loss.vicreg_loss import covariance_loss as lightly_cov

    assert float(covariance_loss(x)) == pytest.approx(float(lightly_cov(x)), rel=1e-5)


def test_densecl_dense_term_is_bounded_and_stays_on_this_rank():
    from test_methods import tiny_cfg
    from ssl_derm.encoders import create_encoder
    from ssl_derm.methods import build_method

    torch.manual_seed(0)
    m = build_method(tiny_cfg("densecl", dense_max_cells=10), create_encoder("test_vit", 32), 10)
    assert not m.dense_criterion.gather_distributed  # every rank's cells as negatives: W times the logits
    rows = []
    inner = m.dense_criterion.forward
    m.dense_criterion.forward = lambda q, k: rows.append(q.shape[0]) or inner(q, k)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]  # 8 images x 2x2 cells = 32 per direction
    loss, logs = m.training_step(views, 0)
    assert rows == [10, 10] and torch.isfinite(loss)
    m.cfg.dense_max_cells = 0
    rows.clear()
    m.training_step(views, 0)
    assert rows == [32, 32]
