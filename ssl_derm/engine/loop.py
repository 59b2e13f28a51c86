"""The training loop: a plain PyTorch loop with bf16 autocast on CUDA, gradient clipping, a cosine
schedule with warm-up, atomic checkpoints with resume, a NaN guard, TensorBoard and tqdm."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from ssl_derm.config import TrainConfig
from ssl_derm.engine import distributed as D
from ssl_derm.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ssl_derm.engine.logger import Logger
from ssl_derm.engine.optim import build_optimizer, build_scheduler
from ssl_derm.errors import TrainingError


class _Step(nn.Module):
    """Routes DDP's forward to ``method.training_step`` so gradient sync hooks fire."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, step):
        return self.method.training_step(views, step)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def fit(method: nn.Module, batches, augment: Callable, cfg: TrainConfig, out_dir, device: torch.device,
        logger: Optional[Logger] = None, monitor: Optional[Callable[[int], dict]] = None,
        denormalize: Optional[Callable] = None) -> dict:
    """Train ``method`` for ``cfg.max_steps`` steps and return a summary.

    batches: ``.get(step) -> (B,3,S,S) uint8`` on the device. augment: uint8 batch -> list of views.
    monitor(step) -> dict of scalars, called every ``monitor_every`` steps by the caller's choice.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    main = D.is_main()
    step_module = _Step(method).to(device)
    if D.world_size() > 1:
        if device.type == "cuda" and getattr(method, "sync_batchnorm_needed", False):
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = torch.compile(step_module) if cfg.compile else step_module
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(method, cfg, world_size=D.world_size())
    scheduler = build_scheduler(optimizer, cfg)

    start = 0
    if cfg.resume and last.is_file():
        state = load_checkpoint(last, map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        if main:
            print(f"resumed from {last} at step {start}")

    def checkpoint(step: int) -> None:
        if main:
            save_checkpoint(last, {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "step": step, "rng": rng_state()})

    history, seen, t0 = [], 0, time.time()
    loss_val = float("nan")
    # Reading the loss on the host makes the CPU wait for the GPU, so finiteness is accumulated on the
    # device and read only where it matters: before a checkpoint is written and at log steps.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    good_step = start

    def check(step: int) -> None:
        if bool(nonfinite):
            bad = int(first_bad)
            raise TrainingError(
                f"loss is not finite at step {bad}; stopped at step {step}. The last good checkpoint is kept at "
                f"{last} (step {good_step if last.is_file() else 'none yet'}). Lower train.lr, raise "
                "train.warmup_steps or set train.clip_grad, then run the same command again to resume from it.")

    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="pretrain",
               disable=not main, dynamic_ncols=True)
    method.train()
    for step in bar:
        x = batches.get(step)
        with torch.no_grad():
            views = augment(x)
        with _autocast(device, cfg.amp):
            loss, logs = compiled(views, step)
        bad = ~torch.isfinite(loss.detach())
        first_bad = torch.where(bad & ~nonfinite, torch.full_like(first_bad, step), first_bad)
        nonfinite = nonfinite | bad
        if device.type != "cuda":  # free on the CPU: stop before a non-finite update is applied
            check(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(params, cfg.clip_grad) if cfg.clip_grad > 0 else None
        optimizer.step()
        scheduler.step_update(step + 1)
        method.on_step_end(step)
        seen += x.shape[0] * D.world_size()
        if main and (step % cfg.log_every == 0 or step == cfg.max_steps - 1):
            check(step)
            loss_val = float(loss.detach())
            lr = optimizer.param_groups[0]["lr"]
            rate = seen / max(time.time() - t0, 1e-9)
            if logger:
                logger.scalars({"loss": loss_val, "lr": lr, "img_per_s": rate, **logs}, step, prefix="train/")
                if grad_norm is not None:
                    logger.scalar("train/grad_norm", grad_norm, step)
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", ips=f"{rate:.0f}")
            history.append({"step": step, "loss": loss_val})
        if main and logger and denormalize and cfg.image_log_every and step % cfg.image_log_every == 0:
            for i, v in enumerate(views[:2]):
                logger.image_grid(f"views/{i}", denormalize(v[:16]), step)
        if monitor is not None:
            res = monitor(step)
            if res and main and logger:
                logger.scalars(res, step, prefix="monitor/")
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
            check(step)
            checkpoint(step + 1)
            good_step = step + 1
    check(cfg.max_steps - 1)
    checkpoint(cfg.max_steps)
    bar.close()
    elapsed = time.time() - t0
    return {"steps": cfg.max_steps, "resumed_from": start, "final_loss": loss_val, "loss_history": history,
            "train_seconds": elapsed, "img_per_s": seen / max(elapsed, 1e-9)}
