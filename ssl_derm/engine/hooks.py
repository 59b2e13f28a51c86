"""Hooks: what a run adds to the engine's step without a loop of its own.

A hook is called after every optimiser step with the number of steps done. Its ``state_dict`` goes
into every checkpoint (the best val state, an EMA teacher, monitor history...), so a resumed run
ends exactly where an uninterrupted one would. Per-rank objects (samplers, generators) are not hooks
but :class:`Stateful` values that the engine saves once per rank.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch


class Hook:
    """Base: ``name`` keys the state in the checkpoint ("" = nothing to save)."""

    name = ""

    def on_start(self, engine) -> None:
        """After a resume, before the first step (``engine.start`` is the first step to run)."""

    def after_step(self, engine, done: int) -> None:
        """After the optimiser step; ``done`` steps are finished. Set ``engine.stop = True`` to end early."""

    def on_end(self, engine) -> None:
        """After the last step (also when a finished run is loaded again)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Every(Hook):
    """``fn(done)`` every ``every`` steps (and at the last step when ``last`` is set)."""

    def __init__(self, fn: Callable[[int], None], every: int, last: bool = False):
        self.fn, self.every, self.last = fn, every, last

    def after_step(self, engine, done: int) -> None:
        if (self.every and done % self.every == 0) or (self.last and done == engine.max_steps):
            self.fn(done)


def snapshot(module: torch.nn.Module) -> dict:
    """A detached CPU copy of the state dict (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class BestState(Hook):
    """Periodic validation with best-state selection.

    Every ``every`` steps and at the last one, ``score()`` (higher is better) is logged as
    ``log_tag`` and recorded as ``{"step", key}``; the best state of ``module()`` is kept (a CPU copy)
    and loaded back into it by :meth:`restore`. ``at_start``: the untrained state is a candidate too.
    """

    name = "best"

    def __init__(self, score: Callable[[], float], module: Callable[[], torch.nn.Module], every: int, key: str,
                 log: Optional[Callable[[str, float, int], None]] = None, log_tag: str = "", at_start: bool = False,
                 report: Optional[Callable[[int, float], None]] = None):
        self.score_fn, self.module, self.every, self.key = score, module, every, key
        self.log, self.log_tag, self.at_start, self.report = log, log_tag, at_start, report
        self.best, self.step, self.state, self.history = -math.inf, 0, None, []

    def on_start(self, engine) -> None:
        if self.at_start and engine.start == 0:
            self.select(0)

    def after_step(self, engine, done: int) -> None:
        if done % self.every == 0 or done == engine.max_steps:
            score = self.select(done)
            if self.report is not None:
                self.report(done, score)

    def select(self, done: int) -> float:
        score = float(self.score_fn())
        if self.log is not None:
            self.log(self.log_tag, score, done)
        self.history.append({"step": done, self.key: score})
        if score > self.best:
            self.best, self.step, self.state = score, done, snapshot(self.module())
        return score

    def restore(self) -> None:
        if self.state is not None:
            self.module().load_state_dict(self.state)

    def state_dict(self) -> dict:
        return {"best": self.best, "step": self.step, "state": self.state, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.step, self.state, self.history = (state["best"], state["step"], state["state"],
                                                          list(state["history"]))


class Stateful:
    """Wraps a per-rank random source so the engine can save and restore it: a numpy ``Generator``,
    a ``torch.Generator``, or any object with ``state_dict``/``load_state_dict``."""

    def __init__(self, obj):
        self.obj = obj

    def state_dict(self):
        o = self.obj
        if isinstance(o, np.random.Generator):
            return o.bit_generator.state
        if isinstance(o, torch.Generator):
            return {"torch_generator": o.get_state()}
        return o.state_dict()

    def load_state_dict(self, state) -> None:
        o = self.obj
        if isinstance(o, np.random.Generator):
            o.bit_generator.state = state
        elif isinstance(o, torch.Generator):
            o.set_state(state["torch_generator"])
        else:
            o.load_state_dict(state)
