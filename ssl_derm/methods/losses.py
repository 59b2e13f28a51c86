"""lightly's NT-Xent, VICReg and iBOT patch losses, computed without a host sync.

lightly selects entries with boolean masks (``logits[~diag_mask]``, ``cov[..., nondiag_mask]``,
``weight[mask]``): on a GPU each one waits for the device to finish, every step. The same values come
from masking with ``-inf`` / subtracting the diagonal / weights built on the host, so the step stays
asynchronous (``engine/sync_audit.py`` checks it). Each function equals its lightly counterpart
(tests/test_methods_losses.py); the rest of lightly (gathers, centres, the variance term) is reused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss.vicreg_loss import VICRegLoss as _LightlyVICReg, invariance_loss, variance_loss
from lightly.utils import dist as ldist
from torch import Tensor, nn


class NTXentLoss(nn.Module):
    """In-batch NT-Xent (SimCLR, DenseCL) as lightly's ``NTXentLoss(memory_bank_size=0)``.

    out0, out1: (B, D) projections of the two views; with ``gather_distributed`` the negatives come from
    every rank (lightly's differentiable gather). Logits (2B, 2*B*W): the positive, and every other
    view of the batch; a view's similarity to itself is -inf instead of removed."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        b = out0.shape[0]
        offset = 0
        big0, big1 = out0, out1
        if self.gather_distributed and ldist.world_size() > 1:
            big0, big1 = torch.cat(ldist.gather(out0), 0), torch.cat(ldist.gather(out1), 0)
            offset = ldist.rank() * b
        cols = torch.arange(big0.shape[0], device=out0.device)
        own = torch.arange(b, device=out0.device) + offset
        self_sim = cols.view(1, -1) == own.view(-1, 1)  # (B, B*W): each view with itself
        t = self.temperature
        l00 = (out0 @ big0.T / t).masked_fill(self_sim, float("-inf"))
        l11 = (out1 @ big1.T / t).masked_fill(self_sim, float("-inf"))
        logits = torch.cat([torch.cat([out0 @ big1.T / t, l00], 1), torch.cat([out1 @ big0.T / t, l11], 1)], 0)
        return F.cross_entropy(logits, own.repeat(2))


def covariance_loss(x: Tensor) -> Tensor:
    """VICReg's covariance term: x (B, ..., D) -> mean over ... of sum of squared off-diagonal
    covariances / D; the diagonal subtracted rather than masked out."""
    x = x - x.mean(dim=0)
    dim = x.shape[-1]
    cov = torch.einsum("b...c,b...d->...cd", x, x) / (x.shape[0] - 1)
    off = cov.pow(2).sum((-2, -1)) - torch.diagonal(cov, dim1=-2, dim2=-1).pow(2).sum(-1)
    return (off / dim).mean()


class VICRegLoss(_LightlyVICReg):
    """lightly's VICRegLoss (its settings, invariance and variance terms) with :func:`covariance_loss`."""

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        inv = invariance_loss(x=z_a, y=z_b)
        if self.gather_distributed and ldist.world_size() > 1:
            z_a, z_b = torch.cat(ldist.gather(z_a), 0), torch.cat(ldist.gather(z_b), 0)
        var = 0.5 * (variance_loss(x=z_a, eps=self.eps) + variance_loss(x=z_b, eps=self.eps))
        cov = covariance_loss(z_a) + covariance_loss(z_b)
        return self.lambda_param * inv + self.mu_param * var + self.nu_param * cov


def ibot_patch_loss(criterion, teacher_out: Tensor, student_out: Tensor, weight: Tensor, n_images: int,
                    teacher_temp: float) -> Tensor:
    """lightly's ``IBOTPatchLoss.forward`` with the per-row weights given: teacher_out, student_out (M, D)
    head outputs of the M masked patches; weight (M,) 1 / (masked patches of the row's image), built
    where the mask is drawn (no ``weight[mask]`` on the device); the sum over rows / ``n_images``.
    Updates the criterion's teacher centre as lightly does."""
    teacher_softmax = F.softmax((teacher_out - criterion.center.value) / teacher_temp, dim=-1)
    student_log_softmax = F.log_softmax(student_out / criterion.student_temp, dim=-1)
    loss = -(teacher_softmax * student_log_softmax).sum(-1)
    criterion.center.update(teacher_out)
    return (loss * weight).sum() / n_images
