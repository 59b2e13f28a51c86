"""augment.lesion_crop_p: lesion centres from masks, crops moved to keep them in frame, no change at 0,
and the archive's lesion masks cached beside the image cache."""
import numpy as np
import pytest
import torch

from ssl_derm.augment import AugmentError, build_preset, denormalize
from ssl_derm.augment.lesion import MARGIN, WithLesionChannel, lesion_centres
from ssl_derm.augment.ops import affine_views
from ssl_derm.config import AugmentConfig, DataConfig


def test_lesion_centres_by_hand():
    m = torch.zeros(3, 16, 16)
    m[0, 2:6, 10:14] = 1  # rows 2..5, cols 10..13: box edges 10..14 and 2..6 of 16
    m[1, 0, 0] = 1
    c = lesion_centres(m)
    assert c[0].tolist() == pytest.approx([(10 + 14) / 16 - 1, (2 + 6) / 16 - 1])
    assert c[1].tolist() == pytest.approx([1 / 16 - 1, 1 / 16 - 1])
    assert torch.isnan(c[2]).all()  # no lesion found


def _view_coords(theta, point):
    """Where the input point (B,2) lands in each view's output coordinates: (B,V,2)."""
    a, t = theta[..., :2], theta[..., 2]
    return torch.linalg.solve(a, point[:, None, :] - t)


def test_with_p1_every_crop_holds_the_lesion_centre():
    torch.manual_seed(0)
    b, v = 256, 4
    lesion = torch.rand(b, 2) * 2 - 1  # anywhere, corners included
    lesion[:8] = torch.tensor([[-0.97, 0.97]])
    for hw in ((64, 64), (48, 80)):
        theta = affine_views(v, b, hw, (0.02, 1.0), 180.0, 0.5, 0.5, "cpu", lesion=lesion, lesion_p=1.0)
        u = _view_coords(theta, lesion)
        assert u.abs().max() <= MARGIN + 1e-4
    plain = affine_views(v, b, (64, 64), (0.02, 0.05), 180.0, 0.5, 0.5, "cpu")
    assert (_view_coords(plain, lesion).abs().amax(-1) > 1).float().mean() > 0.5  # small crops usually miss it
    half = affine_views(v, b, (64, 64), (0.02, 0.05), 180.0, 0.5, 0.5, "cpu", lesion=lesion, lesion_p=0.5)
    moved = (_view_coords(half, lesion).abs().amax(-1) <= MARGIN + 1e-4).float().mean()
    assert 0.4 < moved < 0.75


def test_images_without_a_lesion_keep_their_crops():
    lesion = torch.full((4, 2), float("nan"))
    torch.manual_seed(1)
    a = affine_views(2, 4, (32, 32), (0.1, 0.5), 90.0, 0.5, 0.5, "cpu", lesion=lesion, lesion_p=1.0)
    torch.manual_seed(1)
    b = affine_views(2, 4, (32, 32), (0.1, 0.5), 90.0, 0.5, 0.5, "cpu")
    assert torch.equal(a, b)


def _dots(b=32, size=64, seed=0):
    """Black images with one white 4x4 lesion each; masks mark it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 4, size, size, dtype=torch.uint8)
    for i in range(b):
        r, c = torch.randint(0, size - 4, (2,), generator=g).tolist()
        x[i, :3, r:r + 4, c:c + 4] = 255
        x[i, 3, r:r + 4, c:c + 4] = 1
    return x


@pytest.mark.parametrize("preset", ["two_view", "multi_crop"])
def test_lesion_crops_in_the_preset(preset):
    quiet = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, crop_scale_min=0.02, crop_scale_max=0.05,
                 local_crop_scale_min=0.02, local_crop_scale_max=0.05, n_local_crops=2)
    x = _dots()
    seen = {}
    for p in (0.0, 1.0):
        cfg = AugmentConfig(lesion_crop_p=p, **quiet)
        torch.manual_seed(0)
        views = build_preset(preset, cfg, 32)(x)
        seen[p] = torch.cat([denormalize(v, cfg).amax(dim=(1, 2, 3)) for v in views]) > 0.5
    assert seen[1.0].all()  # every view shows (part of) its lesion
    assert seen[0.0].float().mean() < 0.5
    # p = 0: exactly today's views, the mask channel only dropped
    cfg = AugmentConfig(lesion_crop_p=0.0, **quiet)
    torch.manual_seed(3)
    with_mask = build_preset(preset, cfg, 32)(x)
    torch.manual_seed(3)
    plain = build_preset(preset, cfg, 32)(x[:, :3].contiguous())
    assert all(torch.equal(a, b) for a, b in zip(with_mask, plain))


def test_lesion_crop_p_needs_masks_and_a_probability():
    with pytest.raises(AugmentError, match="augment.lesion_crop_p=0.5 needs the lesion masks"):
        build_preset("two_view", AugmentConfig(lesion_crop_p=0.5), 32)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(AugmentError, match="augment.lesion_crop_p"):
        build_preset("two_view", AugmentConfig(lesion_crop_p=1.5), 32)


def test_with_lesion_channel_reads_rows_of_both():
    imgs = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    masks = (np.arange(5 * 16).reshape(5, 4, 4) % 2).astype(np.uint8)
    both = WithLesionChannel(imgs, masks)
    rows = both[np.array([3, 1])]
    assert both.shape == (5, 4, 4, 4) and len(both) == 5 and rows.shape == (2, 4, 4, 4)
    assert np.array_equal(rows[..., :3], imgs[[3, 1]]) and np.array_equal(rows[..., 3], masks[[3, 1]])


def test_archive_masks_are_computed_once_and_cached(tmp_path, monkeypatch):
    from ssl_derm.data import load_dataset
    from ssl_derm.segmenters import archive_masks as A

    ds = load_dataset(DataConfig(images=["synthetic"], synthetic_n=12, image_size=32, cache_dir=str(tmp_path)),
                      progress=False)
    masks = A.archive_masks(ds, progress=False)
    assert masks.shape == (12, 32, 32) and set(np.unique(masks)) <= {0, 1}
    assert A.entry_dir(ds).parent == ds.cache_dir and A.entry_dir(ds).name.startswith("lesions-32px-")
    inter = (masks.astype(bool) & ds.masks.astype(bool)).sum((1, 2))
    union = (masks.astype(bool) | ds.masks.astype(bool)).sum((1, 2))
    assert float(np.mean(inter / np.maximum(union, 1))) > 0.5  # they are lesion masks (synthetic truth)

    def no_build(*a, **k):
        raise AssertionError("the cached entry should have been read")

    monkeypatch.setattr(A, "_build", no_build)
    assert np.array_equal(A.archive_masks(ds, progress=False), masks)


def test_pretrain_with_lesion_crops_end_to_end(tmp_path):
    import json

    from ssl_derm.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), "device=cpu", "data.synthetic_n=24", "data.image_size=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "train.batch_size=8",
                 "method.proj_hidden_dim=32", "method.proj_dim=16", "monitor.every_steps=0",
                 "augment.lesion_crop_p=0.5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert len(list((tmp_path / "cache").glob("lesions-32px-*/masks.u8"))) == 1
