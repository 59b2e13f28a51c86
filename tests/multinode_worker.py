"""Run by tests/test_multinode.py under two single-process torchrun "nodes" on one host (gloo, CPU), or
in-process as the one-process reference: an engine run on the decode-once batches whose global batch
is the same whatever the world size, so every world size must end at the same weights.

    multinode_worker.py OUT CKPT_DIR [KILL_AFTER [LATE_S]]
KILL_AFTER: rank 1 dies (SIGKILL) after that step, once (OUT/killed marks it); the job is run again, or
torchrun starts the workers again (--max-restarts). LATE_S: once OUT/killed exists, rank 1 waits that many
seconds before it joins the process group (a node that comes back slower than the others).
Rank 0 writes OUT/result.json: the final weights and the step it resumed from.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import CacheBatches, Engine, Hook
from ssl_derm.engine import distributed as D

GLOBAL_BATCH, STEPS = 8, 8


class KillRank1(Hook):
    """Rank 1 dies (SIGKILL) after step ``after``, once: ``marker`` is written first, so a restart goes through."""

    def __init__(self, after: int, marker: Path):
        self.after, self.marker = after, marker

    def after_step(self, engine, done):
        if done == self.after and D.rank() == 1 and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # as a node that loses power: no cleanup, no message


def train(ckpt_dir: Path, kill_after: int = 0, marker: Path = None) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    world = D.world_size()
    batches = CacheBatches(images, GLOBAL_BATCH // world, "cpu", seed=0, rank=D.rank(), world=world)
    torch.manual_seed(0)
    model = nn.Linear(48, 1)
    cfg = TrainConfig(max_steps=STEPS, batch_size=GLOBAL_BATCH // world, lr=0.05, warmup_steps=0, ckpt_every=2,
                      log_every=1, clip_grad=0.0)

    def step_fn(module, step, micro):
        x = batches.get(step).float().flatten(1) / 255
        return (module(x).squeeze(1) - x.mean(1)).pow(2).mean(), {}

    hooks = [KillRank1(kill_after, marker)] if kill_after else []
    out = Engine(model, cfg, "cpu", ckpt_dir=ckpt_dir, hooks=hooks, progress=False).fit(step_fn)
    return {"weight": model.weight.detach().flatten().tolist(), "bias": float(model.bias.detach()), "world": world,
            "resumed_from": out["resumed_from"]}


def main(out: Path, ckpt: Path, kill_after: int, late_s: float) -> None:
    if late_s and os.environ.get("RANK") == "1" and (out / "killed").exists():
        time.sleep(late_s)
    D.init_distributed(torch.device("cpu"), timeout_min=2)
    result = train(ckpt, kill_after, out / "killed")
    if D.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0,
         float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
