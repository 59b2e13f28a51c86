"""The engine's per-step overhead against a bare PyTorch loop, on the CPU, in one process.

Both train the same small convnet on the same in-memory batches with the same timm AdamW and cosine
schedule and clipping; the bare loop is the textbook zero_grad/forward/backward/clip/step. The
engine adds the NaN guard, the precision object, hooks, logging every ``log_every`` steps and tqdm
(disabled), no checkpoints. Runs alternate (bare, engine, bare, ...) so background load hits both;
the ratio of the median seconds per step is printed.

    python benchmarks/engine_overhead.py [--steps 200] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import Engine
from ssl_derm.engine.optim import build_optimizer, build_scheduler


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def bare(cfg, xs, ys) -> float:
    m = model()
    opt = build_optimizer(m, cfg)
    sched = build_scheduler(opt, cfg)
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        loss = nn.functional.cross_entropy(m(xs[step % len(xs)]), ys[step % len(ys)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), cfg.clip_grad)
        opt.step()
        sched.step_update(step + 1)
    return (time.perf_counter() - t0) / cfg.max_steps


def engine(cfg, xs, ys) -> float:
    m = model()

    def step_fn(module, step, micro):
        return nn.functional.cross_entropy(module(xs[step % len(xs)]), ys[step % len(ys)]), {}

    eng = Engine(m, cfg, "cpu", progress=False)
    t0 = time.perf_counter()
    eng.fit(step_fn)
    return (time.perf_counter() - t0) / cfg.max_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(max_steps=a.steps, batch_size=a.batch, lr=1e-3, warmup_steps=10, clip_grad=3.0,
                      log_every=10, ckpt_every=0, resume=False)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(a.batch, 3, a.size, a.size, generator=g) for _ in range(8)]
    ys = [torch.randint(0, 4, (a.batch,), generator=g) for _ in range(8)]
    engine(TrainConfig(max_steps=5, batch_size=a.batch, ckpt_every=0), xs, ys)  # warm-up of both paths
    bare(TrainConfig(max_steps=5, batch_size=a.batch), xs, ys)
    tb, te = [], []
    for _ in range(a.repeats):
        tb.append(bare(cfg, xs, ys))
        te.append(engine(cfg, xs, ys))
    mb, me = statistics.median(tb), statistics.median(te)
    print(f"bare loop: {1e3 * mb:.3f} ms/step   engine: {1e3 * me:.3f} ms/step   "
          f"(median of {a.repeats} x {a.steps} steps, batch {a.batch} at {a.size} px, {a.threads} thread(s))")
    print(f"engine / bare = {me / mb:.3f}  (overhead {1e3 * (me - mb):+.3f} ms/step)")


if __name__ == "__main__":
    main()
