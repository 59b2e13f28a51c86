"""Helpers shared by several test files (fixtures are in conftest.py): tiny synthetic protocol data and
configs, the kill-and-resume tools, tiny method settings and a tiny sweep file."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from ssl_derm.config import plugin_settings
from ssl_derm.data.synth import SYNTH_CLASSES, synth_arrays
from ssl_derm.encoders import create_encoder
from ssl_derm.engine import Engine, Every, load_checkpoint
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.evaluate.context import Context, split_rows
from ssl_derm.segmenters.archive_masks import masks_for

# ----------------------------------------------------------------------------- protocols
SIZE = 32
ENCODER = "test_resnet"  # timm's 0.4M-parameter ResNet for tests: same code paths as resnet18, 20x fewer weights
FRACTIONS = ("0.1", "0.25", "1.0")


class ArrayDataset(SimpleNamespace):
    """The fields of ssl_derm.data's Dataset that the protocols read."""


def protocol_data():
    """(dataset, split) of 96 synthetic 32 px images: nested labelled fractions with every class, 20 test, 10 val."""
    images, masks, labels = synth_arrays(96, SIZE, seed=0)
    ids = [f"s{i:03d}" for i in range(len(images))]
    labels = labels.copy()
    labels[-6:] = -1  # a few images without a label: unlabeled training data
    ds = ArrayDataset(ids=ids, images=images, masks=masks, labels=labels, classes=list(SYNTH_CLASSES),
                      lesion_ids=None)
    rng = np.random.default_rng(0)
    lab_rows = rng.permutation(np.flatnonzero(labels >= 0))
    test, val, train = lab_rows[:20], lab_rows[20:30], lab_rows[30:]
    labelled = {}
    for frac in FRACTIONS:  # nested subsets with every class present
        keep = []
        for c in range(len(SYNTH_CLASSES)):
            rows_c = train[labels[train] == c]
            keep += list(rows_c[:max(1, int(round(float(frac) * len(rows_c))))])
        labelled[frac] = [ids[r] for r in sorted(keep)]
    split = {"train": [ids[r] for r in train], "val": [ids[r] for r in val], "test": [ids[r] for r in test],
             "labelled": labelled}
    return ds, split


def protocol_cfg(protocol, **extra):
    over = [f"protocol.name={protocol}", f"data.image_size={SIZE}", "device=cpu", "train.max_steps=3",
            f"encoder.name={ENCODER}", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1", "protocol.eval_every=2",
            "protocol.mu=1", "protocol.feature_batch_size=64", "protocol.linear_C=[1.0]", "split.fraction=0.25",
            "protocol.seg_decoder_channels=[32,16,16,8,8]"]
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_finetune_config(None, over, lenient=True)  # each protocol takes the keys it has


def protocol_ctx(data, protocol, tmp_path, **extra):
    ds, split = data
    cfg = protocol_cfg(protocol, **extra)
    torch.manual_seed(0)
    enc = create_encoder(ENCODER, SIZE)
    return Context(cfg=cfg, encoder=enc, device=torch.device("cpu"), dataset=ds,
                   rows=split_rows(ds.ids, ds.labels, split, cfg.split.fraction), out_dir=tmp_path,
                   mask_source=masks_for)


# ----------------------------------------------------------------------------- segmentation
def lesion_folder(root: Path, w: int = 60, h: int = 45) -> Path:
    """8 synthetic lesions as non-square w x h PNG images and masks under root/images, root/masks."""
    from PIL import Image

    images, masks, _ = synth_arrays(8, 64, 5)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, (x, m) in enumerate(zip(images, masks)):
        Image.fromarray(x).resize((w, h), Image.Resampling.BILINEAR).save(root / "images" / f"img{i}.png")
        Image.fromarray(m * 255).resize((w, h), Image.Resampling.NEAREST).save(root / "masks" / f"img{i}.png")
    return root


# ----------------------------------------------------------------------------- kill and resume
VOLATILE = {"seconds", "resumed_from_step", "train_seconds", "img_per_s", "seconds_per_image"}


class Kill(Exception):
    pass


def kill_engine_at(monkeypatch, done_at: int, name: str = ""):
    """Every Engine built from now on (whose name contains ``name``) raises Kill after step ``done_at``."""
    orig = Engine.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        if name in self.name:
            def fn(done):
                if done == done_at:
                    raise Kill
            self.hooks.append(Every(fn, 1))

    monkeypatch.setattr(Engine, "__init__", init)


def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- methods
RESNET, VIT, SWIN = "resnet18", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"
def tiny_cfg(name, **kw):
    base = dict(name=name, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, dino_out_dim=64, decoder_dim=32,
                decoder_depth=1, mask_patch_size=16, temperature=0.2, warmup_teacher_temp_steps=2, n_prototypes=8)
    base.update(kw)
    return plugin_settings("method", base.pop("name"), base, lenient=True)  # each method takes its own keys


def images(b=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


# ----------------------------------------------------------------------------- sweeps
def sweep_spec(tmp_path):
    """A tiny kNN sweep file (pretrained vs random x two fractions x two seeds) under tmp_path."""
    spec = {
        "seeds": [0, 1],
        "downstream": "finetune",
        "metrics": ["balanced_accuracy", "accuracy"],
        "common": {"data.images": ["synthetic"], "data.synthetic_n": 64, "data.image_size": 32,
                   "data.cache_dir": str(tmp_path / "cache"), "encoder.name": "resnet18", "device": "cpu"},
        "pretrain": {"set": {"method.name": "simclr", "train.max_steps": 2, "train.batch_size": 8,
                             "method.proj_hidden_dim": 32, "method.proj_dim": 16}},
        "finetune": {"set": {"protocol.name": "knn"}},
        "grid": {"init": ["pretrained", "random"], "finetune.split.fraction": [0.5, 1.0]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
