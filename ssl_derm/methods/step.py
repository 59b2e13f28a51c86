"""The pretraining step as the engine runs it, shared by ``ssl-derm pretrain`` and the throughput bench.

:class:`MethodStep` routes DDP's forward to the method's ``training_step`` (plus the lesion term where
asked), so DDP's gradient-sync hooks fire; :func:`cache_step` is the step function that reads the
batch at a step from :class:`~ssl_derm.engine.CacheBatches`, augments it on the device and calls it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ssl_derm.methods import lesion_term


class MethodStep(nn.Module):
    """``forward(views, step, masks)`` -> the method's (loss, logs); what DDP wraps."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, step, masks=None):
        return lesion_term.training_step(self.method, views, step, masks)


def cache_step(batches, augment, accumulate: int = 1, views_box: Optional[dict] = None) -> Callable:
    """The engine's ``step_fn`` of pretraining: batch ``step * accumulate + micro`` of ``batches``
    ((B, 3, S, S) uint8 on the device) -> ``augment`` (no gradient) -> the method step.
    ``views_box``: gets the step's views under "views" (the image-logging hook reads them)."""

    def step_fn(module, step: int, micro: int):
        x = batches.get(step * accumulate + micro)
        with torch.no_grad():
            views = augment(x)
        if views_box is not None:
            views_box["views"] = views
        loss, logs = module(views, step, augment.last_masks)
        return loss, {**logs, "batch_size": x.shape[0]}

    return step_fn
