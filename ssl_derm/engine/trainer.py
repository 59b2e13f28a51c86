"""The one training engine: every run that trains a model (pretraining, finetuning, FixMatch, mean
teacher, few-mask segmentation, self-training, Gharawi's per-image fit) hands it a model, a step
function ``step_fn(module, step, micro) -> (loss, logs)`` and hooks; it owns everything else.

Owned here: the optimiser (timm names) and the cosine schedule with warm-up (engine/optim.py), the
precision (engine/precision.py), gradient accumulation (``train.accumulate`` micro-batches, DDP's
gradient sync only on the last), ``train.channels_last``, ``train.compile`` (``nn.Module.compile``
on the modules the run names, so the state-dict keys stay and Python schedule values stay outside
the compiled graph), clipping, the NaN guard (read on the host only where it matters and OR-ed
over ranks), atomic checkpoints every ``train.ckpt_every`` steps with resume, DDP, TensorBoard, tqdm.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ssl_derm.engine import distributed as D
from ssl_derm.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ssl_derm.engine.optim import build_optimizer, build_scheduler
from ssl_derm.engine.precision import Precision, resolve_precision
from ssl_derm.runs.resume import check_resume_config, field_defaults
from ssl_derm.errors import TrainingError


class Engine:
    """Train ``model`` for ``cfg.max_steps`` optimiser steps; see the module docstring.

    model: what is optimised and checkpointed. forward: the module DDP wraps and ``step_fn`` calls
    (default ``model``; pretraining passes a wrapper routing ``forward`` to ``training_step``).
    hooks: :class:`~ssl_derm.engine.hooks.Hook` list. rank_state: name -> object with
    ``state_dict``/``load_state_dict`` saved for each rank (samplers, generators). config: the resolved
    config (a config dataclass, or its dict) stored in checkpoints and compared on resume; a dataclass also
    gives its keys' defaults, so a checkpoint written before a key existed resumes while the key keeps
    its default. ckpt_dir: None = no checkpoints.
    optimizer: a ready optimiser (default: timm's from ``cfg``; ``layer_decay`` or ``lr_scales``
    {child name: LR multiplier} scale parts of the model); schedule=False keeps its LR fixed.
    """

    def __init__(self, model: nn.Module, cfg, device, *, forward: Optional[nn.Module] = None,
                 hooks: Sequence = (), rank_state: Optional[Dict] = None, config=None,
                 ckpt_dir=None, logger=None, log_prefix: str = "train/", name: str = "train",
                 optimizer=None, schedule: bool = True, layer_decay=None, lr_scales=None, sync_batchnorm: bool = False,
                 compile_modules: Optional[Sequence[nn.Module]] = None, progress: bool = True,
                 final_checkpoint: bool = True):
        self.cfg, self.device, self.model = cfg, torch.device(device), model
        self.hooks, self.rank_state = list(hooks), dict(rank_state or {})
        self.config_defaults = field_defaults(config) if dataclasses.is_dataclass(config) else None
        self.config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
        self.logger, self.log_prefix, self.name, self.progress = logger, log_prefix, name, progress
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.final_checkpoint = final_checkpoint
        self.max_steps, self.accumulate = int(cfg.max_steps), max(int(getattr(cfg, "accumulate", 1)), 1)
        self.world, self.main = D.world_size(), D.is_main()
        forward = model if forward is None else forward
        forward.to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            forward.to(memory_format=torch.channels_last)
        if cfg.compile:
            for m in compile_modules or [forward]:
                m.compile()  # in place: state-dict keys unchanged, schedule values stay Python-side
        if self.world > 1:
            if sync_batchnorm and self.device.type == "cuda":
                forward = nn.SyncBatchNorm.convert_sync_batchnorm(forward)
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = forward
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer or build_optimizer(model, cfg, world_size=self.world, layer_decay=layer_decay,
                                                        lr_scales=lr_scales)
        self.scheduler = build_scheduler(self.optimizer, cfg) if schedule else None
        self.precision = Precision(resolve_precision(cfg, self.device), self.device)
        self.start, self.stop = 0, False
        self.history, self.final_loss, self.seen, self.seconds = [], float("nan"), 0, 0.0
        self.last = self.ckpt_dir / "last.pt" if self.ckpt_dir is not None else None
        self.good_step = None

    # ------------------------------------------------------------------ checkpoints
    def state(self, step: int) -> dict:
        ranks = D.gather_objects({"rng": rng_state(), **{k: v.state_dict() for k, v in self.rank_state.items()}})
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "scaler": self.precision.state_dict(), "step": step, "config": self.config,
                "hooks": {h.name: h.state_dict() for h in self.hooks if h.name}, "ranks": ranks,
                "world_size": self.world, "engine": {"history": self.history, "final_loss": self.final_loss,
                                                     "seen": self.seen, "seconds": self.seconds}}

    def save(self, step: int) -> None:
        state = self.state(step)  # a collective under DDP: every rank takes part
        if self.main:
            save_checkpoint(self.last, state)
        self.good_step = step

    def resume(self) -> int:
        """Load ``last.pt`` when ``train.resume`` and it exists; returns the step to start from."""
        if self.last is None or not self.cfg.resume or not self.last.is_file():
            return 0
        state = load_checkpoint(self.last)  # on the CPU; see load_checkpoint
        check_resume_config(self.last, state.get("config"), self.config, self.config_defaults)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        old_steps = (state.get("config") or {}).get("train", {}).get("max_steps", self.max_steps)
        if self.scheduler is not None and state["scheduler"] and old_steps == self.max_steps:
            self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        for h in self.hooks:
            if h.name and h.name in state["hooks"]:
                h.load_state_dict(state["hooks"][h.name])
        ranks = state["ranks"]
        mine = ranks[D.rank()] if D.rank() < len(ranks) else ranks[0]
        if len(ranks) != self.world and self.main:
            print(f"{self.name}: the checkpoint was written by {len(ranks)} rank(s), this run has {self.world}; "
                  "random streams of the extra ranks start from rank 0's")
        set_rng_state(mine["rng"])
        for k, obj in self.rank_state.items():
            if k in mine:
                obj.load_state_dict(mine[k])
        eng = state["engine"]
        self.history, self.final_loss = list(eng["history"]), eng["final_loss"]
        self.seen, self.seconds = eng["seen"], eng["seconds"]
        self.good_step = int(state["step"])
        if self.main:
            print(f"{self.name}: resumed from {self.last} at step {state['step']}")
        return int(state["step"])

    # ------------------------------------------------------------------ the NaN guard
    def _check(self, step: int) -> None:
        """Raise on every rank together when any rank saw a non-finite loss (a collective under DDP)."""
        bad = D.any_true(self._nonfinite)
        if bool(bad):
            first = int(D.min_over_ranks(self._first_bad))
            kept = (f"The last good checkpoint is kept at {self.last} (step {self.good_step})"
                    if self.good_step is not None else "No checkpoint was written yet")
            raise TrainingError(f"loss is not finite at step {first}; stopped at step {step}. {kept}. Lower "
                                "train.lr, raise train.warmup_steps or set train.clip_grad, then run the same "
                                "command again to resume from it.")

    def _guard(self, loss: torch.Tensor, step: int) -> None:
        # kept on the device: reading it on the host would make the CPU wait for the GPU every step
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & ~self._nonfinite, torch.full_like(self._first_bad, step), self._first_bad)
        self._nonfinite = self._nonfinite | bad

    # ------------------------------------------------------------------ the loop
    def fit(self, step_fn: Callable) -> dict:
        """Run the steps; returns {"steps", "resumed_from", "final_loss", "loss_history", "train_seconds",
        "img_per_s"? (when step logs carry ``batch_size``)}."""
        self.start = self.resume()
        for h in self.hooks:
            h.on_start(self)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._first_bad = torch.full((), 2 ** 62, dtype=torch.long, device=self.device)
        every_step_check = self.device.type != "cuda"  # free on the CPU: stop before a bad update
        bar = tqdm(range(self.start, self.max_steps), initial=self.start, total=self.max_steps, desc=self.name,
                   disable=not (self.main and self.progress), dynamic_ncols=True, leave=False)
        self.forward.train()
        t0, seen0 = time.time(), self.seen
        ckpt_every = self.cfg.ckpt_every if self.last is not None else 0
        for step in bar:
            loss_sum = 0.0
            for micro in range(self.accumulate):
                last_micro = micro == self.accumulate - 1
                sync = (self.forward.no_sync() if self.world > 1 and not last_micro
                        else contextlib.nullcontext())
                with sync:
                    with self.precision.autocast():
                        loss, logs = step_fn(self.forward, step, micro)
                    self._guard(loss, step)
                    if every_step_check:
                        self._check(step)
                    self.precision.backward(loss / self.accumulate)
                loss_sum = loss_sum + loss.detach() / self.accumulate
                self.seen += int(logs.pop("batch_size", 0)) * self.world
            grad_norm = self.precision.step(self.optimizer, self.params, self.cfg.clip_grad)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step_update(step + 1)
            for h in self.hooks:
                h.after_step(self, step + 1)
            if step % max(self.cfg.log_every, 1) == 0 or step + 1 == self.max_steps:
                self._check(step)
                self._log(step, loss_sum, logs, grad_norm, bar, t0, seen0)
            if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < self.max_steps:
                self._check(step)
                self.save(step + 1)
            if self.stop:
                break
        bar.close()
        self._check(self.max_steps - 1)
        ran = self.start < self.max_steps
        self.seconds += time.time() - t0 if ran else 0.0
        if ran and self.last is not None and self.final_checkpoint and not self.stop:
            self.save(self.max_steps)
        for h in self.hooks:
            h.on_end(self)
        out = {"steps": self.max_steps, "resumed_from": self.start, "final_loss": self.final_loss,
               "loss_history": self.history, "train_seconds": self.seconds}
        if self.seen:
            out["img_per_s"] = self.seen / max(self.seconds, 1e-9)
        return out

    def _log(self, step, loss, logs, grad_norm, bar, t0, seen0) -> None:
        self.final_loss = float(loss)
        terms = {k: float(v) for k, v in logs.items()}  # the step's own terms (e.g. loss_lesion), kept in metrics.json too
        self.history.append({"step": step, "loss": self.final_loss, **terms})
        if not self.main:
            return
        lr = self.optimizer.param_groups[-1]["lr"]
        values = {"loss": self.final_loss, "lr": lr, **terms}
        if self.seen > seen0:
            values["img_per_s"] = (self.seen - seen0) / max(time.time() - t0, 1e-9)
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        if self.logger is not None:
            self.logger.scalars(values, step, prefix=self.log_prefix)
        bar.set_postfix(loss=f"{self.final_loss:.4f}", lr=f"{lr:.2e}")
