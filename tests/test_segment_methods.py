"""Every registered segmenter on synthetic lesions with exact masks; the shared prior and clean-up."""
import numpy as np
import pytest
import torch

from ssl_derm.config import ConfigError, load_config
from ssl_derm.data.synth import synth_arrays
from ssl_derm.encoders import create_encoder
from ssl_derm.metrics.segmentation import score_dataset
from ssl_derm.registry import names
from ssl_derm.segmenters.base import build_segmenter, segmenter_class
from ssl_derm.segmenters.pipeline import predict_batch
from ssl_derm.segmenters.cleanup import clean_mask, select_component
from ssl_derm.segmenters.config import DEFAULT_METHOD, SegmentConfig, check_segment_config
from ssl_derm.segmenters.prior import choose_lesion_clusters, otsu_threshold, skin_ring
from ssl_derm.segmenters.vignette import field_of_view

SIZE = 48
ENCODER = {"kmeans_features": "resnet18", "gharawi": "resnet18", "vit_attention": "vit_tiny_patch16_224"}
# Jaccard each method must reach on these synthetic lesions (the no-checkpoint ones; the rest only run)
# the synthetic set draws very light to dark skin; the default's steps against acquisition shift cost it about
# 0.08 there (0.85 -> 0.77 on these 12 images; 0.776 with the average fill of long hair lines and the opening)
# while they raise it on HAM10000, darker skin included (benchmarks/RESULTS.md, "Robustness to acquisition shift")
MIN_JACCARD = {"contrast_em": 0.75, "kmeans_color": 0.75, "otsu_blue": 0.5, "otsu_gray": 0.5, "gharawi": 0.6}



@pytest.fixture(scope="module")
def synth():
    images, masks, _ = synth_arrays(12, SIZE, 3)
    return images, masks.astype(bool)


def _cfg(method, *extra):
    # lenient: the gharawi keys reach gharawi only (as in a sweep over segmenters)
    return check_segment_config(load_config(SegmentConfig, None, [f"segment.method={method}", "segment.iters=4",
                                                                  "segment.work_size=32", *extra], lenient=True))


def test_registry_has_every_method():
    assert {"contrast_em", "gharawi", "otsu_gray", "otsu_blue", "kmeans_color", "kmeans_features",
            "vit_attention"} <= set(names("segmenter"))
    assert segmenter_class("default") is segmenter_class(DEFAULT_METHOD)
    assert not segmenter_class("default").needs_encoder  # the default runs on any folder, no checkpoint


@pytest.mark.parametrize("method", names("segmenter"))
def test_every_segmenter_runs_and_scores(method, synth):
    images, true = synth
    needs = segmenter_class(method).needs_encoder
    if needs:  # the slow ones: fewer images
        images, true = images[:6], true[:6]
    torch.manual_seed(0)
    enc = create_encoder(ENCODER.get(method, "resnet18"), SIZE) if needs else None
    scores, masks = predict_batch(build_segmenter(_cfg(method), enc), images)
    assert scores.shape == masks.shape == true.shape
    assert scores.dtype == np.float32 and masks.dtype == bool
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    j = score_dataset(masks, true, [str(i) for i in range(len(true))])["mean"]["jaccard"]
    assert j >= MIN_JACCARD.get(method, 0.0), f"{method}: mean Jaccard {j:.3f}"


def test_gharawi_per_batch_and_refine(synth):
    images, true = synth
    enc = create_encoder("resnet18", SIZE)
    _, masks = predict_batch(build_segmenter(_cfg("gharawi", "segment.per_image=false", "segment.refine_em=true"), enc), images[:3])
    assert masks.shape == (3, SIZE, SIZE) and masks.any()


def test_prediction_is_deterministic_and_empty_batch(synth):
    images, _ = synth
    seg = build_segmenter(_cfg("contrast_em"))
    a, b = predict_batch(seg, images[:3])[1], predict_batch(seg, images[:3])[1]
    assert np.array_equal(a, b)
    s, m = predict_batch(seg, images[:0])
    assert s.shape == (0, SIZE, SIZE) and m.shape == (0, SIZE, SIZE)


def test_config_errors():
    with pytest.raises(ValueError, match="available: default"):
        build_segmenter(_cfg("no_such_method"))
    with pytest.raises(ValueError, match="is not a ViT"):
        build_segmenter(_cfg("vit_attention"), create_encoder("resnet18", 32))
    with pytest.raises(ValueError, match="needs an encoder"):
        build_segmenter(_cfg("gharawi"))
    with pytest.raises(ConfigError, match="segment.component"):
        _cfg("contrast_em", "segment.component=biggest")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(SegmentConfig, None, ["segment.methd=otsu_blue"])
    with pytest.raises(ValueError, match="uint8"):
        predict_batch(build_segmenter(_cfg("contrast_em")), np.zeros((2, 8, 8, 3), np.float32))  # uint8 only


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(50, 5, 1000), rng.normal(150, 5, 1000)])
    t = otsu_threshold(v)
    assert (v[:1000] < t).mean() > 0.99 and (v[1000:] > t).all()


def _vignetted_image(size=64):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    L = np.full((size, size), 70.0)
    L[r > 0.55 * size] = 5.0  # dark corners outside the lens circle
    L[r < 0.12 * size] = 30.0  # a dark central lesion
    return L, r


def test_field_of_view_excludes_dark_corners_not_the_lesion():
    L, r = _vignetted_image()
    valid = field_of_view(L)
    assert not valid[0, 0] and not valid[-1, -1]
    assert valid[32, 32] and valid[r < 0.5 * 64].mean() > 0.97
    assert field_of_view(np.full((64, 64), 60.0)).all()  # no vignette: everything valid
    assert field_of_view(L, enabled=False).all()


def test_field_of_view_keeps_a_dark_lesion_that_reaches_a_corner():
    """A dark lesion cut by the frame touches a corner like a lens vignette, but it lies inside the circle
    fitted to its edge, not outside it: nothing is left out (the lesion and the skin stay in view)."""
    size = 64
    yy, xx = np.mgrid[:size, :size]
    L = np.full((size, size), 70.0)
    L[np.hypot(yy - 44, xx - 44) < 0.5 * size] = 12.0
    assert field_of_view(L).all()


def test_choose_lesion_clusters_and_ring():
    L, r = _vignetted_image()
    valid = r <= 0.55 * 64
    ring = skin_ring(valid, 2, 8)
    assert ring.any() and not (ring & (r < 0.3 * 64)).any()
    feats = np.stack([L, np.zeros_like(L), np.zeros_like(L)])
    labels = (r < 0.12 * 64).astype(int) + 2 * ((r > 0.3 * 64) & valid)  # lesion 1, skin 0 and 2
    lesion = choose_lesion_clusters(labels, feats, valid, ring)
    assert np.array_equal(lesion, (r < 0.12 * 64))


def test_clean_up_picks_central_component_and_fills_holes():
    m = np.zeros((40, 40), bool)
    m[15:26, 15:26] = True
    m[19:22, 19:22] = False  # a hole
    m[0:14, 0:14] = True  # a bigger blob in the corner
    central = clean_mask(m, "central")
    assert central[20, 20] and not central[0, 0]
    assert select_component(m, "largest")[0, 0]
    assert clean_mask(m, "all")[0, 0] and clean_mask(m, "all")[20, 20]


def test_shared_modules_import_no_concrete_segmenter():
    """base.py, prep.py and em.py sit below every segmenter: none of them imports one."""
    import ast
    import inspect

    from ssl_derm.registry import get, names
    from ssl_derm.segmenters import base, em, prep

    concrete = {get("segmenter", n).__module__ for n in names("segmenter")}
    for mod in (base, em, prep):
        tree = ast.parse(inspect.getsource(mod))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & concrete, (mod.__name__, imported & concrete)


def test_gharawi_reads_the_last_stage_only_when_asked(synth):
    from ssl_derm.config import AugmentConfig
    from ssl_derm.segmenters.gharawi import encoder_levels

    enc = create_encoder("resnet18", 64)
    images = np.zeros((2, 64, 64, 3), np.uint8)
    early = encoder_levels(enc, images, AugmentConfig(), torch.device("cpu"))
    deep = encoder_levels(enc, images, AugmentConfig(), torch.device("cpu"), max_stride=32)
    assert [m.shape[-1] for m in early] == [16, 8, 4]  # strides 4, 8, 16
    assert [m.shape[-1] for m in deep] == [16, 8, 4, 2]  # + the last stage (stride 32)
    small = create_encoder("resnet18", SIZE)
    _, masks = predict_batch(build_segmenter(_cfg("gharawi", "segment.max_feature_stride=32"), small), synth[0][:2])
    assert masks.shape == (2, SIZE, SIZE) and masks.any()
    with pytest.raises(ConfigError, match="segment.max_feature_stride"):
        _cfg("gharawi", "segment.max_feature_stride=2")


def test_the_fast_morphology_gives_scipys_values():
    """The hole filling by labelling, the hair closing and the horizontal/vertical line closings by separable
    filters give what scipy's binary_fill_holes, kornia's closing and the footprint closings give."""
    from scipy import ndimage as ndi

    from ssl_derm.segmenters.cleanup import fill_mask_holes
    from ssl_derm.segmenters.colour import line_closings, remove_hair

    rng = np.random.default_rng(0)
    for size in (8, 40, 96):
        for smooth in (0.5, 2.0, 4.0):
            mask = ndi.gaussian_filter(rng.random((size, size)), smooth) > 0.5
            assert np.array_equal(fill_mask_holes(mask), ndi.binary_fill_holes(mask))
    ring = np.zeros((32, 32), bool)
    ring[8:24, 8:24] = True
    ring[12:20, 12:20] = False
    assert fill_mask_holes(ring).sum() == 16 * 16 and not fill_mask_holes(np.zeros((4, 4), bool)).any()
    g = rng.random((2, 48, 48)).astype(np.float32)
    lines = [np.zeros((7, 7), bool) for _ in range(4)]  # 0, 45, 90 and 135 degrees through the centre
    lines[0][3] = lines[2][:, 3] = True
    lines[1][np.arange(7), np.arange(7)[::-1]] = lines[3][np.arange(7), np.arange(7)] = True
    for closed, line in zip(line_closings(g, 7), lines):
        assert np.array_equal(closed, ndi.grey_closing(g, footprint=line[None]))
    import kornia
    import torch

    images = rng.integers(0, 256, (2, 48, 48, 3)).astype(np.uint8)  # kornia's closing, the image's part of
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # each window at the border (geodesic)
    closed = kornia.morphology.closing(x, torch.ones(5, 5)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(remove_hair(images, 5), (closed * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
