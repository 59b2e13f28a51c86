"""The default segmenter's own steps: the local-contrast feature, the lesion prior log-odds, the EM round by edges,
the convex hull."""
import numpy as np
import pytest

from ssl_derm.config import ConfigError, load_config
from ssl_derm.segmenters.base import build_segmenter
from ssl_derm.segmenters.cleanup import convex_hull
from ssl_derm.segmenters.config import SegmentConfig, check_segment_config
from ssl_derm.segmenters.contrast_em import colour_edges, local_contrast, pick_round
from ssl_derm.segmenters.em import em_split
from ssl_derm.segmenters.pipeline import predict_batch

SKIN = np.array([200.0, 160.0, 150.0])



def _cfg(*extra):
    return check_segment_config(load_config(SegmentConfig, None, ["segment.method=contrast_em", *extra]))


def _jaccard(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _rough_lesion(size=128, seed=0):
    """Skin with mild noise; a central disc of pixel-scale light/dark checkerboard whose mean is the skin's colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = np.hypot(yy - size / 2, xx - size / 2) < size / 5
    img = SKIN + rng.normal(0, 2, (size, size, 3))
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None]
    img = np.where(disc[..., None], img + 45 * checker, img)
    return img.clip(0, 255).astype(np.uint8)[None], disc[None]


def test_local_contrast_is_zero_on_flat_and_high_on_rough():
    flat = np.full((1, 128, 128), 50.0)  # the window is given in px at 128 and scaled with the size
    rough = flat + 10 * np.where(np.add.outer(np.arange(128), np.arange(128)) % 2 == 0, 1, -1)
    assert np.allclose(local_contrast(flat, 0.7), 0, atol=1e-3)
    assert local_contrast(rough, 0.7)[0, 8:120, 8:120].min() > 5


def test_texture_feature_finds_a_lesion_with_the_skins_mean_colour():
    # hair removal off and heavy colour smoothing: the disc's mean colour is the skin's, only its roughness differs
    images, true = _rough_lesion()
    keys = ["segment.hair_kernel=0", "segment.hair_lines=0", "segment.smooth_sigma=3"]
    _, with_texture = predict_batch(build_segmenter(_cfg(*keys)), images)
    _, colour_only = predict_batch(build_segmenter(_cfg(*keys, "segment.texture_sigma=0")), images)
    assert _jaccard(with_texture[0], true[0]) > 0.8
    assert _jaccard(colour_only[0], true[0]) < 0.5


def test_lesion_bias_gives_ambiguous_pixels_to_the_lesion():
    rng = np.random.default_rng(0)
    # 1-D features: skin N(0, 1), lesion N(8, 2), and a ramp of in-between values (a lesion's pale rim)
    f = np.concatenate([rng.normal(0, 1, 2000), rng.normal(8, 2, 400), np.linspace(1, 5, 200)])[None]
    valid = np.ones(f.shape[1], bool)
    init = f[0] > 4
    _, equal = em_split(f, valid, init, 3, bias=0.0)
    _, biased = em_split(f, valid, init, 3, bias=1.0)
    _, against = em_split(f, valid, init, 3, bias=-1.0)
    assert (biased >= equal).all() and biased.sum() > equal.sum()  # only ever adds pixels, and some
    assert (against <= equal).all() and against.sum() < equal.sum()


def test_default_bias_grows_a_soft_edged_lesion():
    size = 96
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    w = np.clip((r - size / 6) / (size / 6), 0, 1)[..., None]  # dark centre fading into the skin
    img = (SKIN * w + np.array([90.0, 50.0, 40.0]) * (1 - w)).astype(np.uint8)[None]
    _, default = predict_batch(build_segmenter(_cfg()), img)
    _, equal = predict_batch(build_segmenter(_cfg("segment.lesion_bias=0")), img)
    assert default.sum() > equal.sum() > 0


def test_an_earlier_round_on_the_lesions_edge_beats_a_last_round_leaking_into_skin():
    # a sharp dark disc on skin with a smooth shading: round 1 found the disc, round 2 leaked into the shading
    size = 64
    yy, xx = np.mgrid[:size, :size]
    disc = np.hypot(yy - 32, xx - 32) < 10
    lab = np.stack([70 - 0.3 * xx, np.full((size, size), 15.0), np.full((size, size), 15.0)])
    lab[0][disc] = 30.0
    edges = colour_edges(lab[None])[0]
    valid = np.ones((size, size), bool)
    leak = disc | (xx > 40)
    rounds = [(disc.ravel().astype(float), disc.ravel()), (leak.ravel().astype(float), leak.ravel())]
    assert pick_round(rounds, edges, valid, "central", True, 1.25) is rounds[0]
    assert pick_round(rounds, edges, valid, "central", True, 0.0) is rounds[1]  # 0: always the last round
    # an earlier round only wins by the margin: the same outline twice keeps the last
    same = [rounds[0], (disc.ravel().astype(float), disc.ravel().copy())]
    assert pick_round(same, edges, valid, "central", True, 1.25) is same[1]


def test_the_default_picks_its_round_by_edges(monkeypatch):
    import ssl_derm.segmenters.contrast_em as ce

    calls = []
    real = ce.pick_round
    monkeypatch.setattr(ce, "pick_round", lambda *a: calls.append(a) or real(*a))
    images, _ = _rough_lesion(64)
    predict_batch(build_segmenter(_cfg()), images)
    assert len(calls) == 1 and len(calls[0][0]) == _cfg().segment.em_iters
    predict_batch(build_segmenter(_cfg("segment.edge_margin=0")), images)
    assert len(calls) == 1  # off: the last round, no edge computation


def _close_up(size=128, seed=0):
    """A close-up: a pale lesion that fills the frame but for its corners (skin), with a dark band across it
    that reaches the skin ring on two sides."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lesion = np.hypot(yy - size / 2, xx - size / 2) < 0.55 * size
    img = np.where(lesion[..., None], [170.0, 120.0, 95.0], SKIN)
    img = np.where((lesion & (np.abs(yy - size / 2) < 0.1 * size))[..., None], [90.0, 55.0, 40.0], img)
    return (img + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)[None], lesion[None]


def test_the_pale_rim_of_a_lesion_that_reaches_the_ring_joins_it():
    images, true = _close_up()
    _, without = predict_batch(build_segmenter(_cfg("segment.pale_rim=0")), images)
    _, default = predict_batch(build_segmenter(_cfg()), images)
    assert _jaccard(without[0], true[0]) < 0.7  # the ring's lightest half is pale lesion: only the band is found
    assert _jaccard(default[0], true[0]) > 0.95


def test_texture_keys_are_checked():
    with pytest.raises(ConfigError, match="segment.texture_sigma"):
        _cfg("segment.texture_sigma=-1")
    with pytest.raises(ConfigError, match="segment.texture_weight"):
        _cfg("segment.texture_weight=0")
    with pytest.raises(ConfigError, match="segment.edge_margin"):
        _cfg("segment.edge_margin=-1")
    with pytest.raises(ConfigError, match="segment.pale_rim"):
        _cfg("segment.pale_rim=-0.5")


def test_convex_hull_fills_bays_and_leaves_convex_shapes():
    m = np.zeros((12, 12), bool)
    m[0:10, 0:3] = True  # an L: hull corners (0,0), (0,2), (9,0), (9,9), (7,9)
    m[7:10, 0:10] = True
    h = convex_hull(m)
    assert (h >= m).all()
    # inside the hull: x - y <= 2 (the edge from (0,2) to (7,9)) and within the L's box
    yy, xx = np.mgrid[:12, :12]
    expected = (xx - yy <= 2) & (yy <= 9) & (xx <= 9)
    assert (h == expected).all()
    assert h[5, 4] and not h[2, 6] and not h[11, 11]
    disc = np.hypot(yy - 5.5, xx - 5.5) < 4.5
    assert (convex_hull(disc) == disc).all()  # already convex: unchanged
    line = np.zeros((12, 12), bool)
    line[3, 1:9] = True
    assert (convex_hull(line) == line).all() and not convex_hull(np.zeros((5, 5), bool)).any()


def _disc_with_pale_sector(size=96):
    """A dark lesion disc whose 70-degree sector (centre to rim) has the skin's own colour."""
    yy, xx = np.mgrid[:size, :size]
    r, ang = np.hypot(yy - size / 2, xx - size / 2), np.degrees(np.arctan2(yy - size / 2, xx - size / 2))
    disc = r < size / 4
    sector = disc & (np.abs(ang) < 35) & (r > 2)
    img = np.where((disc & ~sector)[..., None], np.array([90.0, 50.0, 40.0]), SKIN)
    img = img + np.random.default_rng(0).normal(0, 2, img.shape)
    return img.clip(0, 255).astype(np.uint8)[None], disc, sector


def test_the_default_takes_the_hull_closing_a_pale_bay():
    images, disc, sector = _disc_with_pale_sector()
    _, hull = predict_batch(build_segmenter(_cfg()), images)
    _, plain = predict_batch(build_segmenter(_cfg("segment.convex_hull=false")), images)
    assert _cfg().segment.convex_hull
    assert plain[0][sector].mean() < 0.2  # without the hull, the pale sector is a bay of skin
    assert hull[0][sector].mean() > 0.5 and _jaccard(hull[0], disc) > _jaccard(plain[0], disc) + 0.05
    # it closes the bay and does not spill into the skin beyond the soft rim that both masks share
    assert (hull[0] & ~disc).sum() <= (plain[0] & ~disc).sum() + 0.01 * disc.sum()


def test_convex_hull_is_the_default_only_of_contrast_em_and_needs_one_component():
    assert not load_config(SegmentConfig, None, ["segment.method=otsu_gray"]).segment.convex_hull
    with pytest.raises(ConfigError, match="segment.convex_hull.*component.*all"):
        _cfg("segment.component=all")
    assert not _cfg("segment.component=all", "segment.convex_hull=false").segment.convex_hull


def _dense_em_prototypes():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "dense_em_prototypes.py"
    spec = importlib.util.spec_from_file_location("dense_em_prototypes", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_dense_em_prototypes_reproduce_the_default_and_add_unit_variance_components():
    """benchmarks/dense_em_prototypes.py: its EM loop without dense features is the default segmenter's, mask for
    mask, and a start given from outside (the Gharawi-style variant) is where that EM begins."""
    import torch

    from ssl_derm.encoders import create_encoder
    from ssl_derm.segmenters.cleanup import clean_up
    from ssl_derm.segmenters.contrast_em import features
    from ssl_derm.segmenters.prep import prepare

    bench = _dense_em_prototypes()
    cfg = _cfg()
    s = cfg.segment
    images = np.concatenate([_rough_lesion(64, seed)[0] for seed in range(3)])
    images[1] = np.roll(images[1], 9, axis=1)  # not all alike
    prep = prepare(images, s)
    _, expected = predict_batch(build_segmenter(cfg), images)
    keep = lambda m: clean_up(m, prep.valid, s, prep.hair)
    got = keep(bench.em_masks(features(prep, s), prep, s))
    assert got.any() and np.array_equal(got, expected)
    # a start with no lesion pixel leaves the EM nothing to refit: it stays empty, where the default's Otsu start finds one
    empty = np.zeros_like(prep.valid)
    assert not bench.em_masks(features(prep, s), prep, s, empty).any()

    torch.manual_seed(0)
    comps = bench.dense_components(create_encoder("resnet18", 64).eval(), images, cfg.augment, 2, 32, 8)
    assert comps.shape == (3, 2, 64, 64)
    assert np.allclose(comps.reshape(3, 2, -1).std(-1), 1.0, atol=1e-2)
    assert abs(float(np.corrcoef(comps[0, 0].ravel(), comps[0, 1].ravel())[0, 1])) < 1e-2  # principal axes


def test_an_images_masks_do_not_depend_on_its_batch():
    from ssl_derm.data.synth import synth_arrays

    images = synth_arrays(32, 48, seed=2)[0]  # image 30 changed with its neighbours when edges crossed the batch
    seg = build_segmenter(_cfg())
    together = predict_batch(seg, images)[1]
    alone = np.concatenate([predict_batch(seg, images[i:i + 1])[1] for i in range(len(images))])
    assert np.array_equal(together, alone)
    lab = np.random.default_rng(0).normal(size=(3, 3, 16, 16))
    np.testing.assert_allclose(colour_edges(lab)[1], colour_edges(lab[1:2])[0])
