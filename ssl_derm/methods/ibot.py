"""iBOT: self-distillation on the class token (DINO) plus masked patch prediction against the momentum
teacher's patch tokens (lightly's DINOLoss and IBOTPatchLoss; one shared DINO head for both).

Plain timm ViTs only: the student sees the two global views with a random subset of patch tokens
replaced by a learnable mask token right after the patch embedding (before position embedding, as
SimMIM does here); the teacher sees them whole. Masking: each global view is masked with probability
``ibot_mask_prob``; a masked view loses ``round(r * N)`` of its N patches, r ~ U(``ibot_mask_ratio_min``,
``ibot_mask_ratio_max``), positions uniformly at random (iBOT reports random and blockwise masking on par).
The counts are drawn on the host (torch's CPU generator) and the positions on the device.

Loss = DINO loss over class tokens (teacher: 2 globals; student: masked globals + local crops)
       + ``patch_loss_weight`` x iBOT loss over the masked patches of each global view
       (+ ``koleo_weight`` x KoLeo on the student's global class tokens, as DINOv2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from ssl_derm.errors import ConfigError, MethodError
from ssl_derm.methods.base import Method, allow_any_input_size, fp32, make_teacher, plain_vit, vit_tokens
from ssl_derm.methods.dino import DINOSettings, koleo_term, make_dino_head, scheduled_teacher_temp
from ssl_derm.registry import register


@dataclass
class IBOTSettings(DINOSettings):
    name: str = "ibot"
    patch_loss_weight: float = 1.0  # weight of the masked patch-token loss beside DINO's class-token loss
    ibot_mask_prob: float = 0.5  # share of global views that get masked
    ibot_mask_ratio_min: float = 0.1  # smallest share of patches masked in a masked view
    ibot_mask_ratio_max: float = 0.5  # largest share of patches masked in a masked view

    def check(self) -> None:
        super().check()
        self.at_least(0, "patch_loss_weight")
        if not 0.0 < self.ibot_mask_prob <= 1.0:
            raise ConfigError(f"config key 'method.ibot_mask_prob': {self.ibot_mask_prob} must be in (0, 1]")
        if not 0.0 < self.ibot_mask_ratio_min <= self.ibot_mask_ratio_max < 1.0:
            raise ConfigError(f"config keys 'method.ibot_mask_ratio_min/max': ({self.ibot_mask_ratio_min}, "
                              f"{self.ibot_mask_ratio_max}) must satisfy 0 < min <= max < 1")


def patch_mask(b: int, h: int, w: int, prob: float, ratio: tuple, device) -> Tensor:
    """(B, h, w) bool: image i is masked with probability ``prob``, then round(r_i * h * w) patches
    (at least 1), r_i ~ U(ratio); at least one patch in the batch is masked so the patch loss exists."""
    n = h * w
    on = torch.rand(b) < prob
    counts = torch.where(on, (torch.empty(b).uniform_(*ratio) * n).round().clamp(1, n - 1), torch.zeros(b))
    if counts.sum() == 0:
        counts[0] = 1
    rank = torch.rand(b, n, device=device).argsort(dim=1).argsort(dim=1)  # a random rank per patch
    return (rank < counts.to(device).view(b, 1)).view(b, h, w)


@register("method", "ibot", settings=IBOTSettings)
class IBOT(Method):
    """views: [global0, global1, local0, ...]; globals (B,3,H,W), locals (B,3,h,w); ``encoder`` a plain ViT."""

    default_preset = "multi_crop"
    sync_batchnorm_needed = False

    def __init__(self, encoder, cfg, max_steps):
        if not plain_vit(encoder):
            raise MethodError(f"method 'ibot' masks a ViT's patch tokens; encoder.name='{encoder.name}' is not a plain "
                              "timm ViT. Use e.g. encoder.name=vit_small_patch16_224, or method.name=dino for a CNN")
        allow_any_input_size(encoder)
        super().__init__(encoder, cfg, max_steps)
        self.patch = int(encoder.model.patch_embed.patch_size[0])
        self.prefix = int(encoder.model.num_prefix_tokens)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.model.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = make_dino_head(cfg, encoder.num_features)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_head = make_dino_head(cfg, encoder.num_features)  # weight norm: copy, not deepcopy
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.cls_loss = DINOLoss(output_dim=cfg.dino_out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                                 teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp,
                                 center_momentum=cfg.center_momentum)
        self.patch_loss = IBOTPatchLoss(output_dim=cfg.dino_out_dim, teacher_temp=cfg.teacher_temp,
                                        student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
        self.koleo = KoLeoLoss()

    def teacher_temp(self, step: int) -> float:
        return scheduled_teacher_temp(self.cfg, step)

    def random_mask(self, b: int, h: int, w: int, device) -> Tensor:
        c = self.cfg
        return patch_mask(b, h, w, c.ibot_mask_prob, (c.ibot_mask_ratio_min, c.ibot_mask_ratio_max), device)

    def training_step(self, views, step):
        self.expect_views(views, 2, at_least=True)
        glob = torch.cat(views[:2])  # (2B, 3, H, W)
        gh, gw = glob.shape[-2] // self.patch, glob.shape[-1] // self.patch
        mask = self.random_mask(glob.shape[0], gh, gw, glob.device)  # (2B, gh, gw)
        with torch.no_grad():
            t_tok = vit_tokens(self.teacher_encoder, glob)  # (2B, prefix + N, C)
            t_cls = self.teacher_head(self.teacher_encoder.pool(t_tok)).float()
            t_patch = self.teacher_head(t_tok[:, self.prefix:][mask.flatten(1)]).float()  # (M, out)
        s_tok = vit_tokens(self.encoder, glob, mask=mask.flatten(1), mask_token=self.mask_token)
        s_feats = self.encoder.pool(s_tok)  # (2B, D)
        student = list(self.head(s_feats).float().chunk(2))
        if len(views) > 2:
            student += list(self.head(self.encoder(torch.cat(views[2:]))).float().chunk(len(views) - 2))
        s_patch = self.head(s_tok[:, self.prefix:][mask.flatten(1)]).float()  # (M, out)
        temp = self.teacher_temp(step)
        with fp32(glob.device):
            loss = self.cls_loss(list(t_cls.chunk(2)), student, teacher_temp=temp)
            # the patch loss averages over the images of both global views (it divides by mask.shape[0])
            loss = loss + self.cfg.patch_loss_weight * self.patch_loss(t_patch, s_patch, mask, teacher_temp=temp)
            if self.cfg.koleo_weight > 0:
                loss = loss + koleo_term(s_feats, 2, self.cfg.koleo_weight, self.koleo)
        return loss, {"teacher_temp": temp, "momentum": self.momentum(step)}

    @torch.no_grad()
    def on_step_end(self, step):
        m = self.momentum(step)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.head, self.teacher_head, m)
