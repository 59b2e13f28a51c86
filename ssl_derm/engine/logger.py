"""TensorBoard logging, from rank 0 only (other ranks get a logger that writes nothing)."""
from __future__ import annotations

from pathlib import Path

import torch


class Logger:
    """Scalars, image grids and text to ``<out_dir>/tb``. ``enabled=False`` makes every call a no-op."""

    def __init__(self, out_dir, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for k, v in values.items():
            self.scalar(prefix + k, v, step)

    def image_grid(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """``images``: (B, 3, H, W) uint8, or float in [0, 1]."""
        if self.writer is None:
            return
        import torchvision

        x = images.detach().float().cpu()
        if images.dtype == torch.uint8:
            x = x / 255.0
        self.writer.add_image(tag, torchvision.utils.make_grid(x.clamp(0, 1), nrow=nrow), step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
