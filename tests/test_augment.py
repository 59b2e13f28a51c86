"""Augmentation presets: shapes, ranges, seeded determinism, the fused ops against references."""
import math

import kornia
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssl_derm.augment import AugmentError, build_preset, check_config, denormalize, normalize
from ssl_derm.augment import ops
from ssl_derm.config import AugmentConfig, ConfigError, load_config, PretrainConfig
from ssl_derm.registry import names

PRESETS = ["two_view", "multi_crop", "masked", "weak_strong", "eval"]



def images(b=4, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def test_registry_has_every_preset():
    assert set(PRESETS) <= set(names("preset"))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shapes_dtype_range(name):
    cfg = AugmentConfig(n_local_crops=3, solarize_p=0.5)
    p = build_preset(name, cfg, 32)
    views = p(images())
    n = {"two_view": 2, "multi_crop": 5, "masked": 1, "weak_strong": 2, "eval": 1}[name]
    assert len(views) == n == p.n_views
    for i, v in enumerate(views):
        side = 16 if name == "multi_crop" and i >= 2 else 32
        assert v.shape == (4, 3, side, side) and v.dtype == torch.float32
        pix = denormalize(v, cfg)
        # views are clamped to [0,1] before normalising, so normalised values stay in that box
        lo = (0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
        hi = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
        assert (v >= lo.view(1, 3, 1, 1) - 1e-4).all() and (v <= hi.view(1, 3, 1, 1) + 1e-4).all()
        assert pix.std() > 0.05  # not blank


@pytest.mark.parametrize("name", PRESETS)
def test_seeded_determinism(name):
    p = build_preset(name, AugmentConfig(n_local_crops=2), 32)
    x = images()
    torch.manual_seed(3)
    a = p(x)
    torch.manual_seed(3)
    b = p(x)
    assert all(torch.equal(u, w) for u, w in zip(a, b))
    if name != "eval":
        torch.manual_seed(4)
        c = p(x)
        assert not torch.equal(a[0], c[0])


def test_views_differ_and_float_input_matches_uint8():
    p = build_preset("two_view", AugmentConfig(), 32)
    x = images()
    torch.manual_seed(0)
    v0, v1 = p(x)
    assert not torch.allclose(v0, v1)
    torch.manual_seed(0)
    f0, _ = p(x.float() / 255)
    assert torch.allclose(v0, f0, atol=1e-5)


def test_half_precision_path_close_to_float32():
    """The float16 path the GPU takes, run on the CPU: same draws, nearly the same pixels."""
    x = images()
    cfg = AugmentConfig(blur_p=0.0)
    torch.manual_seed(1)
    a = build_preset("two_view", cfg, 32)(x)
    torch.manual_seed(1)
    b = build_preset("two_view", cfg, 32, dtype=torch.float16)(x)
    assert all((u - w).abs().mean() < 0.02 for u, w in zip(a, b))


def test_warp_identity_flips_and_rotation_about_centre():
    x = torch.rand(2, 3, 8, 8)
    theta = ops.affine_views(3, 2, (8, 8), (1, 1), 0, 0, 0, "cpu", ratio=(1, 1))
    out = ops.warp(x, theta, 8, "reflection")
    assert torch.equal(out[:2], x) and torch.equal(out[4:], x)  # view-major stacking
    theta = ops.affine_views(1, 2, (8, 8), (1, 1), 0, 1.0, 1.0, "cpu", ratio=(1, 1))
    assert torch.equal(ops.warp(x, theta, 8, "zeros"), x.flip(-1).flip(-2))
    # a centred disc is unchanged by any rotation about the centre
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    disc = ((xx ** 2 + yy ** 2) < 100).float().expand(4, 3, 32, 32)
    theta = ops.affine_views(1, 4, (32, 32), (1, 1), 180, 0, 0, "cpu", ratio=(1, 1))
    assert (ops.warp(disc, theta, 32, "zeros") - disc).abs().mean() < 0.02
    # and a crop of area s covers s of the image: a 0.25-area crop magnifies the disc 2x
    theta = ops.affine_views(1, 1, (32, 32), (0.25, 0.25), 0, 0, 0, "cpu", ratio=(1, 1))
    theta[..., 2] = 0  # centred
    small = ((xx ** 2 + yy ** 2) < 25).float().expand(1, 3, 32, 32)
    assert float(ops.warp(small, theta, 32, "zeros").mean()) == pytest.approx(float(small.mean()) * 4, rel=0.1)


def test_colour_transform_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 12, 12) * 0.5 + 0.25  # no clamping anywhere
    one, zero = torch.ones(5), torch.zeros(5)
    b = torch.tensor([1.2, 1, 1, 1, 1.0])
    c = torch.tensor([1, 0.7, 1, 1, 1.0])
    s = torch.tensor([1, 1, 0.6, 1, 1.0])
    gray = torch.tensor([0, 0, 0, 1, 0.0])
    y = ops.colour_transform(x, b, c, s, zero, gray)
    ref = torch.stack([TF.adjust_brightness(x[0], 1.2), TF.adjust_contrast(x[1], 0.7), TF.adjust_saturation(x[2], 0.6),
                       TF.rgb_to_grayscale(x[3], 3), x[4]])
    assert torch.allclose(y, ref, atol=1e-4)
    # hue: a rotation about the gray axis, in the same direction as torchvision's hue shift
    h = ops.colour_transform(x, one, one, one, torch.full((5,), 0.05), zero)
    ref = torch.stack([TF.adjust_hue(xi, 0.05) for xi in x])
    assert torch.allclose(h.mean((2, 3)).sum(1), x.mean((2, 3)).sum(1), atol=1e-4)  # keeps gray level
    assert torch.nn.functional.cosine_similarity((h - x).flatten(), (ref - x).flatten(), dim=0) > 0.6


def test_blur_no_blur_is_exact_and_half_blur_changes_some():
    x = torch.rand(6, 3, 20, 20)
    # the CUDA path blurs "unchosen" images with sigma 1e-3: that must be the identity
    same = kornia.filters.gaussian_blur2d(x, (3, 3), torch.full((6, 2), 1e-3))
    assert torch.equal(same, x)
    torch.manual_seed(0)
    y = ops.gaussian_blur(x, 0.5, (1.0, 2.0))
    changed = [(y[i] != x[i]).any().item() for i in range(6)]
    assert 0 < sum(changed) < 6


def test_weak_strong_share_geometry():
    cfg = AugmentConfig(strong_magnitude=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0, strong_solarize_p=0.0,
                        posterize_p=0.0, erase_p=0.0)
    weak, strong = build_preset("weak_strong", cfg, 32)(images())
    assert torch.allclose(weak, strong, atol=1e-5)


def test_eval_is_normalize_and_roundtrip():
    cfg = AugmentConfig()
    x = images(size=32)
    (v,) = build_preset("eval", cfg, 32)(x)
    assert torch.allclose(v, normalize(x, cfg))
    assert torch.allclose(denormalize(v, cfg), x.float() / 255, atol=1e-5)
    (small,) = build_preset("eval", cfg, 16)(x)
    assert small.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("key,value", [("hflip", 1.5), ("padding_mode", "wrap"), ("crop_scale_min", 0.0),
                                       ("local_crop_scale_min", 0.9), ("hue", 0.7), ("blur_sigma_min", 0.0)])
def test_bad_config_names_the_key(key, value):
    cfg = AugmentConfig(**{key: value})
    with pytest.raises(AugmentError, match=f"augment.{key}"):
        check_config(cfg, 32)


def test_unknown_preset_and_bad_input():
    with pytest.raises(AugmentError, match="augment.preset.*two_view"):
        build_preset("three_view", AugmentConfig(), 32)
    p = build_preset("two_view", AugmentConfig(), 32)
    with pytest.raises(AugmentError, match=r"\(B, 3, H, W\)"):
        p(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(AugmentError, match="uint8"):
        p(torch.zeros(1, 3, 32, 32, dtype=torch.int32))


def test_yaml_augment_section_loads(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("augment:\n  preset: multi_crop\n  padding_mode: zeros\n  n_local_crops: 4\n")
    cfg = load_config(PretrainConfig, f)
    assert cfg.augment.padding_mode == "zeros" and math.isclose(cfg.augment.weak_crop_scale_min, 0.8)
    with pytest.raises(ConfigError, match="augment.paddng_mode"):
        load_config(PretrainConfig, overrides=["augment.paddng_mode=zeros"])


def test_random_erase_box_area():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 20, 20)
    y = ops.random_erase(x, 1.0, (0.1, 0.1), ratio=(1.0, 1.0))
    erased = (y == 0).float().mean((1, 2, 3))
    assert ((erased > 0.05) & (erased < 0.16)).all()  # ~10% of the pixels, up to rounding of the box edges
    assert torch.equal(ops.random_erase(x, 0.0, (0.1, 0.1)), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", PRESETS)
def test_presets_never_sync_on_cuda(name):
    """The augmentation must not make the host wait for the device (it would stall the training step)."""
    p = build_preset(name, AugmentConfig(blur_p=0.5, solarize_p=0.2), 64)
    x = images(8, 64).cuda()
    p(x)  # first call makes the cached constants
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = p(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda and v.dtype == torch.float32 for v in views)
