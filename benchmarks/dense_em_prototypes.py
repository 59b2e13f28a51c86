"""Two prototypes that tie a frozen encoder's dense features to the default segmenter.

Neither paid, so neither is a library option; this script reproduces the dense-feature table of RESULTS.md
("Pretraining for segmentation"). Per image, everything but the named
change is the default's (``contrast_em``: Otsu start, biased EM, round picked by colour edges, convex hull):

- ``dense K,W,IN,STRIDE``: the encoder's maps of stride 4 up to STRIDE (the input resized to IN px) are upsampled,
  standardised, reduced per image to their first K principal components, scaled by W and appended to the EM's
  Lab + local-contrast features (K=0: the default itself);
- ``gharawi``: the Gharawi-style segmenter's cleaned mask (configs/segment/gharawi.yaml) as the EM's start
  ("gh_em"), or its EM rounds as extra candidates of the default's edge pick ("union").

    python benchmarks/dense_em_prototypes.py --checkpoint ENC|none --n 800 --dense 0,0,64,8 2,2,128,8 1,1,64,8
    python benchmarks/dense_em_prototypes.py --checkpoint ENC|none --n 200 --gharawi

Images: the development subset A of the default segmenter (the first 800 of ``np.random.default_rng(15).permutation``), or B
(the next 800) with ``--subset B``; masks are read only to score. The PCA is randomised
(``torch.pca_lowrank``): a rerun of a dense variant moves by about 0.0005.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.config import load_config
from ssl_derm.data import load_dataset
from ssl_derm.encoders import create_encoder
from ssl_derm.packaged import resolve_config
from ssl_derm.runs import seed_everything
from ssl_derm.segmenters import contrast_em as ce
from ssl_derm.segmenters.base import build_segmenter
from ssl_derm.segmenters.cleanup import clean_up
from ssl_derm.segmenters.config import SegmentConfig
from ssl_derm.segmenters.gharawi import encoder_levels
from ssl_derm.segmenters.prep import prepare
from ssl_derm.commands.segment import resolve_data
from ssl_derm.segmenters.scoring import score_predictions

BATCH = 50


def dense_components(encoder, images: np.ndarray, aug_cfg, k: int, in_size: int, max_stride: int) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, k, S, S): per image, the first k principal components (unit variance)
    of the encoder's standardised, upsampled maps of stride 4 to ``max_stride``."""
    x = images
    if in_size != images.shape[1]:
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(in_size, in_size), mode="bilinear", antialias=True, align_corners=False)
        x = t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    size = images.shape[1]
    maps = [F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
            for m in encoder_levels(encoder, x, aug_cfg, "cpu", max_stride)]
    out = []
    for f in torch.cat(maps, 1):
        c = f.reshape(f.shape[0], -1)
        c = ((c - c.mean(1, keepdim=True)) / (c.std(1, keepdim=True) + 1e-6)).T  # (pixels, channels)
        c = c - c.mean(0)
        p = c @ torch.pca_lowrank(c, q=k, center=False)[2][:, :k]
        out.append((p / (p.std(0) + 1e-6)).T.reshape(k, size, size))
    return torch.stack(out).numpy().astype(np.float32)


def em_masks(feats: np.ndarray, prep, s, starts=None, union: bool = False) -> np.ndarray:
    """The default's per-image EM on features (N, C, S, S) -> raw masks bool (N, S, S). ``starts`` (bool (N, S, S)):
    the EM starts there instead of at Otsu's split; with ``union``, both EMs run and the edge pick sees all rounds."""
    edges = ce.colour_edges(feats[:, :3])
    n, c, size, _ = feats.shape
    out = np.zeros((n, size, size), bool)
    for i in range(n):
        f, v, ring = feats[i].reshape(c, -1), prep.valid[i].ravel(), prep.ring[i].ravel()
        otsu = ce.contrast_init(f, v, ring, s.ring_trim, s.ring_light)[1]
        rounds = ce.em_rounds(f, v, otsu if starts is None else starts[i].ravel(), s.em_iters, s.lesion_bias)
        if union:
            own = ce.em_rounds(f, v, otsu, s.em_iters, s.lesion_bias)
            rounds = own[:-1] + rounds[:-1] + own[-1:]  # the default's last round stays the one to beat
        out[i] = ce.pick_round(rounds, edges[i], prep.valid[i], s.component, s.fill_holes, s.edge_margin)[1] \
            .reshape(size, size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/ham10000", help="folder with images/ and masks/")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--checkpoint", required=True, help="encoder.safetensors, or none for random init")
    ap.add_argument("--subset", choices=["A", "B"], default="A")
    ap.add_argument("--n", type=int, default=800, help="the first n images of the subset")
    ap.add_argument("--dense", nargs="*", default=[], metavar="K,W,IN,STRIDE")
    ap.add_argument("--gharawi", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    common = [f"data.images=[{args.data}/images]", f"data.masks={args.data}/masks", f"data.cache_dir={args.cache_dir}",
              f"encoder.checkpoint={args.checkpoint}"]
    cfg = load_config(SegmentConfig, str(resolve_config("segment/default")), common)
    data, masks_dir = resolve_data(cfg)
    ds = load_dataset(data)
    perm = np.random.default_rng(15).permutation(len(ds))
    rows = np.sort(perm[:800] if args.subset == "A" else perm[800:1600])[:args.n]
    ckpt = None if args.checkpoint == "none" else args.checkpoint
    seed_everything(cfg.seed)  # random init: the same weights every run (the first recorded runs did not seed them)
    encoder = create_encoder("resnet18", ds.image_size, ckpt).eval()
    gharawi = None
    if args.gharawi:
        gharawi = build_segmenter(load_config(SegmentConfig, str(resolve_config("segment/gharawi")), common), encoder)
    s = cfg.segment
    variants = [tuple(v.split(",")) for v in args.dense] + ([("gharawi",), ("gh_em",), ("union",)] if args.gharawi else [])
    masks = {v: [] for v in variants}
    t0 = time.time()
    for b in range(0, len(rows), BATCH):
        images = np.asarray(ds.images[rows[b:b + BATCH]])
        prep = prepare(images, s)
        base = ce.features(prep, s)
        keep = lambda m: clean_up(m, prep.valid, s, prep.hair)
        for v in args.dense:
            k, w, in_size, stride = v.split(",")
            feats = base
            if int(k) > 0:
                d = dense_components(encoder, images, cfg.augment, int(k), int(in_size), int(stride))
                feats = np.concatenate([base, float(w) * d], 1)
            masks[tuple(v.split(","))].append(keep(em_masks(feats, prep, s)))
        if gharawi is not None:
            start = keep(gharawi.segment(images, prep)[1])
            masks["gharawi",].append(start)
            masks["gh_em",].append(keep(em_masks(base, prep, s, start)))
            masks["union",].append(keep(em_masks(base, prep, s, start, union=True)))
    ids = [ds.ids[r] for r in rows]
    sizes = [ds.orig_sizes[r] for r in rows]
    print(f"subset {args.subset}, {len(rows)} images, checkpoint {args.checkpoint}, {time.time() - t0:.0f} s")
    for v, ms in masks.items():
        res, _ = score_predictions(ids, np.concatenate(ms), sizes, masks_dir)
        name = f"dense k={v[0]} w={v[1]} in={v[2]} stride<={v[3]}" if len(v) == 4 else v[0]
        print(f"{name}: mean Jaccard {np.mean([res['per_image'][i]['jaccard'] for i in ids]):.4f}")


if __name__ == "__main__":
    main()
