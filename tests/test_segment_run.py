"""``run_segment`` end to end on image folders with exact masks: outputs, original sizes, metrics,
overlays, self-training; and the proof that no mask file is touched before scoring starts."""
import builtins
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_derm.config import ConfigError, load_config
from ssl_derm.data.synth import synth_arrays
from ssl_derm.commands import segment as run_mod
from ssl_derm.segmenters.config import SegmentConfig
from ssl_derm.commands.segment import run_segment
from ssl_derm.segmenters.selftrain import joint_augmentation, loss_weights, reliable_rows

W, H = 60, 45  # original image size (not square, not the cache size)



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesions")
    images, masks, _ = synth_arrays(8, 64, 5)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, (x, m) in enumerate(zip(images, masks)):
        Image.fromarray(x).resize((W, H), Image.Resampling.BILINEAR).save(root / "images" / f"img{i}.png")
        Image.fromarray(m * 255).resize((W, H), Image.Resampling.NEAREST).save(root / "masks" / f"img{i}.png")
    return root


def _cfg(folder, tmp_path, *extra, masks=True):
    over = [f"data.images=[{folder / 'images'}]", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
            "segment.overlay_n=4", *extra]
    if masks:
        over.append(f"data.masks={folder / 'masks'}")
    return load_config(SegmentConfig, None, over)


def test_default_run_writes_masks_metrics_overlays(folder, tmp_path):
    out = tmp_path / "run"
    metrics = run_segment(_cfg(folder, tmp_path), out)
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in pngs] == [f"img{i}" for i in range(8)]
    m = np.asarray(Image.open(pngs[0]).convert("L"))
    assert m.shape == (H, W) and set(np.unique(m)) <= {0, 255}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "contrast_em" and saved["mean"]["n"] == 8
    assert set(saved["per_image"]) == {f"img{i}" for i in range(8)}
    assert saved["mean"]["jaccard"] == pytest.approx(np.mean([v["jaccard"] for v in saved["per_image"].values()]))
    assert saved["mean"]["jaccard"] > 0.6 and metrics["mean"] == saved["mean"]
    assert (out / "overlays_contrast_em.png").is_file() and any((out / "tb").iterdir())
    # the scores are those of the written PNGs against the mask files
    from ssl_derm.metrics.segmentation import image_metrics

    gt = np.asarray(Image.open(folder / "masks" / "img0.png").convert("L")) > 0
    assert image_metrics(m > 0, gt)["jaccard"] == pytest.approx(saved["per_image"]["img0"]["jaccard"])


def test_masks_are_never_read_before_scoring(folder, tmp_path, monkeypatch):
    """Every way to reach a file (open, PIL, numpy, directory listing) is watched for the masks folder;
    touching it before run_segment starts scoring fails the test."""
    masks_dir = str(folder / "masks")
    state = {"scoring": False, "early": [], "late": 0}

    def watch(path):
        p = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else ""
        if p.startswith(masks_dir):
            if state["scoring"]:
                state["late"] += 1
            else:
                state["early"].append(p)

    def spy(fn):
        def wrapped(path, *a, **k):
            watch(path)
            return fn(path, *a, **k)
        return wrapped

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(Image, "open", spy(Image.open))
    monkeypatch.setattr(np, "load", spy(np.load))
    monkeypatch.setattr(os, "walk", spy(os.walk))
    monkeypatch.setattr(os, "scandir", spy(os.scandir))
    monkeypatch.setattr(os, "listdir", spy(os.listdir))
    real_score = run_mod.score_predictions

    def scoring(*a, **k):
        state["scoring"] = True
        return real_score(*a, **k)

    monkeypatch.setattr(run_mod, "score_predictions", scoring)
    metrics = run_segment(_cfg(folder, tmp_path, "segment.method=kmeans_color"), tmp_path / "watched")
    assert state["early"] == [], f"mask files touched before scoring: {state['early'][:3]}"
    assert state["late"] > 0 and metrics["mean"]["n"] == 8  # and they were read to score


def test_predictions_do_not_depend_on_masks(folder, tmp_path):
    run_segment(_cfg(folder, tmp_path), tmp_path / "with")
    metrics = run_segment(_cfg(folder, tmp_path, masks=False), tmp_path / "without")
    assert metrics["mean"] is None
    for p in sorted((tmp_path / "with" / "masks").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "without" / "masks" / p.name)))


def test_self_training_round_and_subset(folder, tmp_path):
    cfg = _cfg(folder, tmp_path, "selftrain.rounds=1", "selftrain.image_size=32", "train.max_steps=2",
               "train.batch_size=4", "segment.max_images=6", "selftrain.decoder_widths=[16,16,8,8,8]",
               "selftrain.select_frac=0.5", "selftrain.select_strata=3")
    metrics = run_segment(cfg, tmp_path / "st")
    assert list(metrics["stages"]) == ["contrast_em", "selftrain_1"]
    assert metrics["stages"]["selftrain_1"]["n_teaching"] == 3  # one of each 2-image area bin teaches; all 6 are predicted
    assert metrics["mean"]["n"] == 6 and len(list((tmp_path / "st" / "masks").glob("*.png"))) == 6
    assert (tmp_path / "st" / "overlays_selftrain_1.png").is_file()


def test_loss_weights_leave_out_unsure_pixels_and_the_outline():
    scores = np.full((1, 16, 16), 0.95, np.float32)
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 4:12, 4:12] = True
    scores[0][~masks[0]] = 0.05
    scores[0, 0, 0] = 0.55  # unsure
    w = loss_weights(scores, masks, band=0.2, boundary_px=0)
    assert w[0, 0, 0] == 0 and w[0, 8, 8] == 1 and w[0, 15, 15] == 1
    scores[0, 8, 8] = 0.1  # mask says lesion, score says skin (a filled hole): left out
    assert loss_weights(scores, masks, 0.2, 0)[0, 8, 8] == 0
    w = loss_weights(scores, masks, 0.2, boundary_px=16)  # 2 px at this size
    assert w[0, 4, 8] == 0 and w[0, 2, 8] == 0 and w[0, 6, 6] == 1 and w[0, 0, 8] == 1


def test_reliable_rows_rank_by_margin_within_area_strata():
    n, s = 8, 8
    masks = np.zeros((n, s, s), bool)
    for i in range(n):  # rows 0-3 small lesions (4 px), rows 4-7 large (32 px)
        masks[i].flat[: 4 if i < 4 else 32] = True
    margin = np.array([0.9, 0.2, 0.5, 0.1, 0.3, 0.95, 0.4, 0.6])  # |2 score - 1|, uniform over each image
    scores = np.where(masks, 0.5 + margin[:, None, None] / 2, 0.5 - margin[:, None, None] / 2).astype(np.float32)
    assert reliable_rows(scores, masks, 1.0, 5).tolist() == list(range(n))
    assert reliable_rows(scores, masks, 0.25, 1).tolist() == [0, 5]  # the two largest margins overall
    assert reliable_rows(scores, masks, 0.25, 2).tolist() == [0, 5]  # the best of each size: here the same
    assert reliable_rows(scores, masks, 0.5, 1).tolist() == [0, 2, 5, 7]
    margin[4:] = [0.99, 0.98, 0.97, 0.96]  # large lesions now all more confident than any small one
    scores = np.where(masks, 0.5 + margin[:, None, None] / 2, 0.5 - margin[:, None, None] / 2).astype(np.float32)
    assert reliable_rows(scores, masks, 0.25, 1).tolist() == [4, 5]  # one ranking: large lesions only
    assert reliable_rows(scores, masks, 0.25, 2).tolist() == [0, 4]  # strata keep one small lesion
    assert reliable_rows(scores, masks, 0.01, 2).tolist() == [0, 4]  # at least one image per stratum


def test_encoder_lr_mult_zero_keeps_the_encoder_weights(tmp_path):
    """selftrain.encoder_lr_mult=0: the decoder learns, the encoder's weights stay as they started."""
    from ssl_derm.segmenters.selftrain import train_round

    images, masks, _ = synth_arrays(6, 32, 3)
    cfg = load_config(SegmentConfig, None, ["selftrain.image_size=32", "train.max_steps=3", "train.batch_size=4",
                                            "selftrain.decoder_widths=[16,16,8,8,8]", "selftrain.encoder_lr_mult=0",
                                            "encoder.name=resnet18"])
    scores = masks.astype(np.float32)
    torch.manual_seed(0)
    model = train_round(cfg, images, np.arange(6), scores, masks.astype(bool), torch.device("cpu"))
    torch.manual_seed(0)
    from ssl_derm.encoders import create_encoder

    start = create_encoder("resnet18", 32, None).model.state_dict()
    trained = model.backbone.state_dict()
    weights = [k for k, v in start.items() if v.is_floating_point() and "running_" not in k]
    assert weights and all(torch.equal(start[k], trained[k]) for k in weights)
    cfg.selftrain.encoder_lr_mult = 1.0
    torch.manual_seed(0)
    moved = train_round(cfg, images, np.arange(6), scores, masks.astype(bool), torch.device("cpu")).backbone.state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in weights)  # the default does train the encoder


def test_selftrain_keys_without_a_round_are_named_as_ignored(folder, tmp_path, capsys):
    run_segment(_cfg(folder, tmp_path, "selftrain.encoder_lr_mult=0.1", "selftrain.select_frac=0.5"), tmp_path / "r0")
    err = capsys.readouterr().err
    for key in ("selftrain.encoder_lr_mult", "selftrain.select_frac"):
        assert f"warning: {key} is ignored by `ssl-derm segment`" in err
    assert "selftrain.image_size" not in err  # keys at their defaults say nothing


@pytest.mark.parametrize("key,value", [("select_frac", "0"), ("select_frac", "1.5"), ("select_strata", "0"),
                                       ("encoder_lr_mult", "-0.1"), ("encoder_lr_mult", "2")])
def test_selection_keys_out_of_range_are_config_errors(folder, tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"selftrain.{key}"):
        run_segment(_cfg(folder, tmp_path, "selftrain.rounds=1", f"selftrain.{key}={value}"), tmp_path / "bad")


def test_joint_augmentation_keeps_image_and_mask_aligned():
    from ssl_derm.config import AugmentConfig

    torch.manual_seed(0)
    m = torch.zeros(4, 1, 32, 32)
    m[:, :, 8:20, 10:26] = 1
    aug = joint_augmentation(AugmentConfig(jitter_p=0.0))
    x, y, w = aug(m.repeat(1, 3, 1, 1), m, torch.ones_like(m))
    agree = ((x[:, :1] > 0.5) == (y > 0.5)).float().mean()
    assert agree > 0.97 and not torch.equal(y, m)  # moved, and moved together
    assert set(torch.unique(w).tolist()) <= {0.0, 1.0}


def test_pretrained_encoder_checkpoint_feeds_the_feature_methods(folder, tmp_path):
    """encoder.checkpoint=PATH (an exported encoder) loads into gharawi and kmeans_features end to end;
    a missing checkpoint is a clear error."""
    from ssl_derm.encoders import create_encoder, export_encoder

    torch.manual_seed(1)
    ckpt = export_encoder(create_encoder("resnet18", 32), tmp_path / "enc" / "encoder.safetensors")
    for method, extra in (("gharawi", ["segment.iters=2", "segment.work_size=16"]), ("kmeans_features", [])):
        cfg = _cfg(folder, tmp_path, f"segment.method={method}", f"encoder.checkpoint={ckpt}", *extra)
        metrics = run_segment(cfg, tmp_path / method)
        assert metrics["encoder_checkpoint"] == str(ckpt) and metrics["mean"]["n"] == 8
    with pytest.raises(ValueError, match="does not exist"):
        run_segment(_cfg(folder, tmp_path, "segment.method=gharawi", f"encoder.checkpoint={tmp_path / 'nope.safetensors'}"),
                    tmp_path / "bad")


def test_thread_setting_is_for_the_run_only(folder, tmp_path):
    torch.set_num_threads(2)
    try:
        run_segment(_cfg(folder, tmp_path, "segment.method=otsu_blue", "train.num_threads=1"), tmp_path / "threads")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
