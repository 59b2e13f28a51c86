"""What the lesion-vs-skin term (``method.lesion_weight``) costs per pretraining step, as a ratio.

SimCLR steps with and without the term (augmentation, forward, backward, optimiser step) on the same
batches, the two interleaved block by block so that a busy machine slows both alike:

    python benchmarks/lesion_term_cost.py                                  # resnet18, 64 px, batch 64, CPU
    python benchmarks/lesion_term_cost.py --encoder resnet50 --image-size 224 --batch-size 128 --device cuda
"""
from __future__ import annotations

import argparse

import torch

from ssl_derm.augment import build_preset
from ssl_derm.commands.bench import _timed
from ssl_derm.config import AugmentConfig, plugin_settings
from ssl_derm.encoders import create_encoder
from ssl_derm.methods import build_method, lesion_term


def _setup(args, weight: float, device):
    torch.manual_seed(0)
    cfg = plugin_settings("method", args.method, {"lesion_weight": weight, "lesion_stride": args.stride})
    method = build_method(cfg, create_encoder(args.encoder, args.image_size), 100).to(device)
    preset = build_preset("two_view", AugmentConfig(), args.image_size).to(device)
    if weight > 0:
        lesion_term.attach(method, "two_view")
        preset.keep_masks = True
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    return method, preset, opt


def _step_fn(setup, batch):
    """One training step on ``batch`` as ``ssl_derm.commands.bench._timed`` wants it: step -> images."""
    method, preset, opt = setup

    def step(s: int) -> int:
        views = preset(batch)
        loss, _ = lesion_term.training_step(method, views, s, preset.last_masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(batch)

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="simclr")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--blocks", type=int, default=4, help="blocks per arm, interleaved")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    s = args.image_size
    batch = torch.randint(0, 256, (args.batch_size, 4, s, s), dtype=torch.uint8, generator=g)
    batch[:, 3] = 0
    batch[:, 3, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1  # a lesion in the middle of every image
    batch = batch.to(device)
    arms = {k: _step_fn(_setup(args, w, device), batch) for k, w in (("plain", 0.0), ("lesion term", 1.0))}
    secs = {k: 0.0 for k in arms}
    for block in range(args.blocks):
        for k, step in arms.items():  # the first block of each arm warms it up with one untimed step
            secs[k] += args.steps * args.batch_size / _timed(step, args.steps, int(block == 0), device)
    n = args.blocks * args.steps * args.batch_size
    out = {k: n / v for k, v in secs.items()}
    out["ratio"] = secs["lesion term"] / secs["plain"]
    print(f"{args.method}/{args.encoder} {s} px batch {args.batch_size} on {device} ({args.threads} threads): "
          f"plain {out['plain']:.1f} img/s, with the lesion term {out['lesion term']:.1f} img/s; "
          f"step time x{out['ratio']:.3f}")
    return out


if __name__ == "__main__":
    main()
