"""The default segmenter's steps against acquisition shift: white balance, hair and marker lines, a skin
ring that the lesion or ink reaches."""
import numpy as np

from ssl_derm.segmenters.cleanup import clean_mask, open_mask
from ssl_derm.segmenters.colour import average_hair, hair_map, inpaint_hair, shades_of_grey
from ssl_derm.segmenters.contrast_em import trimmed_ring


def _skin(size=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((1, size, size, 3), np.float32)
    img[...] = (200, 150, 130)
    img += rng.normal(0, 3, img.shape)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    img[0][disc] = (110, 70, 50)
    return img.clip(0, 255).astype(np.uint8), disc


def test_shades_of_grey_removes_a_colour_cast():
    img, _ = _skin()
    cast = (img.astype(np.float32) * np.array([1.2, 1.0, 0.8])).clip(0, 255).astype(np.uint8)
    a, b = shades_of_grey(img, 6, None), shades_of_grey(cast, 6, None)

    def chroma(x):  # colour without brightness: the cast's effect; the kept brightness is the gains' mean
        x = x.astype(float) + 1
        return x / x.sum(-1, keepdims=True)

    before = np.abs(chroma(img) - chroma(cast)).mean()
    after = np.abs(chroma(a) - chroma(b)).mean()
    assert after < 0.1 * before
    assert abs(a.mean() - img.mean()) < 3  # brightness kept


def test_hair_map_marks_lines_not_blobs_and_inpaints_them():
    img, disc = _skin()
    line = np.zeros(disc.shape, bool)
    line[10, 2:62] = line[11, 2:62] = True  # a hair two pixels thick across the frame
    diag = np.eye(64, dtype=bool) | np.eye(64, k=1, dtype=bool)
    hairy = img.copy()
    hairy[0][line | (diag & ~disc)] = (30, 20, 15)
    hair = hair_map(hairy, 11, 0.08)[0]
    assert hair[line].mean() > 0.9 and hair[diag & ~disc].mean() > 0.8
    fixed = inpaint_hair(hairy, hair[None], 7)
    assert np.abs(fixed[0][line].astype(float) - img[0][line]).mean() < 15  # skin colour again
    assert np.array_equal(fixed[0][~hair], hairy[0][~hair])
    # the lesion, a dark blob, stays: its inside is no hair, and a closing keeps a blob wider than the square
    assert hair[disc & (np.hypot(*np.mgrid[-32:32, -32:32]) < 9)].mean() < 0.05
    assert np.abs(fixed[0][disc].astype(float) - hairy[0][disc]).mean() < 6
    # a small lesion (narrower than the lines) is a blob too: left as it is
    small, _ = _skin()
    small[0, 28:35, 28:35] = (90, 60, 40)
    assert not hair_map(small, 11, 0.08)[0, 30:33, 30:33].any()


def test_average_hair_fills_with_the_mean_around_and_keeps_the_border_and_wide_dark_blobs():
    """The average fill: on textured skin the mean of the skin around (a closing fills brighter), a hair that
    crosses the lesion's border leaves the border where it was, and a dark blob wider than the bound stays."""
    rng = np.random.default_rng(1)
    img, disc = _skin()
    img = (img.astype(np.float32) + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)  # rough skin
    hair = np.zeros((1, 64, 64), bool)
    hair[0, :, 30:33] = True  # a vertical hair over skin and through the lesion (rows 20-44 at column 31)
    hairy = img.copy()
    hairy[hair] = (30, 20, 15)
    avg, closed = average_hair(hairy, hair, 1.75, 11), inpaint_hair(hairy, hair, 7)
    skin_rows = np.r_[2:14, 50:62]
    truth = img[0][skin_rows][:, 30:33].astype(float).mean((0, 1))
    err = lambda x: np.abs(x[0][skin_rows][:, 30:33].astype(float).mean((0, 1)) - truth).mean()
    assert err(avg) < 6 and err(closed) > 2 * err(avg)  # the closing's max-then-min is brighter than the mean
    assert np.array_equal(avg[0][~hair[0]], hairy[0][~hair[0]])
    # along the hair, lesion colour inside the lesion and skin colour outside: the border stays within 2 px
    dark = avg[0, :, 31].astype(float).mean(-1) < (img[0][disc].mean() + img[0][~disc].mean()) / 2
    rows = np.flatnonzero(disc[:, 31])
    assert abs(np.flatnonzero(dark).min() - rows.min()) <= 2 and abs(np.flatnonzero(dark).max() - rows.max()) <= 2
    # a dark blob taken for hair but wider than the bound's square: no brighter than the bound allows (kept dark)
    plain, _ = _skin()
    blob = disc[None].copy()
    kept = average_hair(plain, blob, 1.75, 11)
    assert np.abs(kept[0][disc].astype(float) - plain[0][disc]).mean() < 6
    unbounded = average_hair(plain, blob, 1.75, 63)  # a square wider than the blob: the skin's mean fills it
    assert np.abs(unbounded[0][disc].astype(float) - plain[0][disc]).mean() > 40


def test_the_opening_cuts_a_spur_before_the_hull():
    """A thin spur (hair left over) on a lesion mask stretches its convex hull; the opening first cuts it off.
    A lesion thinner than the disc is kept as it is."""
    yy, xx = np.mgrid[:64, :64]
    lesion = (yy - 32) ** 2 + (xx - 32) ** 2 < 10 ** 2
    spur = lesion.copy()
    spur[32:34, 32:60] = True  # a 2-px spur out to the right
    grown = clean_mask(spur, hull=True)
    cut = clean_mask(spur, hull=True, opening=2)
    assert grown.sum() > lesion.sum() + 100
    assert abs(int(cut.sum()) - int(lesion.sum())) < 25 and not cut[:, 45:].any()
    thin = np.zeros((64, 64), bool)
    thin[30:33, 10:50] = True
    assert np.array_equal(open_mask(thin, 2), thin)


def test_the_opening_keeps_a_mask_cut_by_the_frame_and_opens_hair_only():
    """A lesion that fills the frame keeps its corners and its strips along the edge (the frame is no edge
    of the lesion); with the hair map, only a spur on it goes, a thin lobe of the lesion's own mask stays."""
    full = np.ones((40, 40), bool)
    assert np.array_equal(open_mask(full, 2), full)
    strip = np.zeros((40, 40), bool)
    strip[:, :3] = True
    strip[10:30, :20] = True  # a body, with a 3-px strip along the left edge
    assert open_mask(strip, 2)[:, :3].all()
    yy, xx = np.mgrid[:64, :64]
    lesion = (yy - 32) ** 2 + (xx - 32) ** 2 < 10 ** 2
    mask = lesion.copy()
    mask[32:34, 32:60] = True  # a spur to the right, on a hair
    mask[4:32, 31:33] = True  # a thin lobe up, not on one
    hair = np.zeros_like(mask)
    hair[31:35, 40:64] = True
    out = clean_mask(mask, hull=True, opening=2, only=hair)
    assert not out[:, 45:].any() and out[5, 31:33].all()


def test_trimmed_ring_drops_what_is_not_skin():
    rng = np.random.default_rng(0)
    f = rng.normal(0, 1, (3, 1000))
    f[:, :150] += 12  # 15% of the ring is lesion or ink
    ring = np.ones(1000, bool)
    kept = trimmed_ring(f, ring, 0.25)
    assert not kept[:150].any() and kept[150:].mean() > 0.8
    assert np.array_equal(trimmed_ring(f, ring, 0.0), ring)


def test_flatten_illumination_undoes_a_radial_fall_off_measured_on_the_ring():
    from ssl_derm.segmenters.prior import skin_ring
    from ssl_derm.segmenters.vignette import flatten_illumination

    img, disc = _skin()
    r2 = np.hypot(*np.mgrid[-32:32, -32:32]) ** 2 / (2 * 32 ** 2)
    dark = (img.astype(float) * (1 - 0.5 * r2)[None, ..., None]).astype(np.uint8)
    valid = np.ones((1, 64, 64), bool)
    ring = skin_ring(valid[0], 1, 6)[None]
    flat = flatten_illumination(dark, ring, valid)
    corner, centre_skin = flat[0, :6, :6].mean(), flat[0, 32, 12:16].mean()
    before = dark[0, :6, :6].mean() / dark[0, 32, 12:16].mean()
    assert before < 0.8 and abs(corner / centre_skin - 1) < 0.06
    # the lesion keeps its contrast to the skin
    assert abs(flat[0][disc].mean() / centre_skin - img[0][disc].mean() / img[0, 32, 12:16].mean()) < 0.06


def test_an_older_exported_default_runs_without_the_shift_steps(tmp_path):
    """A classical segmenter exported as model.json format 2 (before contrast_em's acquisition-shift steps)
    runs as it was trained: the steps off, not the new defaults that its segment_config lacks; one of format
    3 (before the average hair fill and the opening) fills hair by a closing and opens nothing; one of format 4
    adds no pale rim."""
    import json

    from ssl_derm.cli import main
    from ssl_derm.segmenters.config import BEFORE_FORMAT_4, BEFORE_FORMAT_5, BEFORE_SHIFT_STEPS
    from ssl_derm.serve.loaders import load_model

    out = tmp_path / "seg"
    assert main(["segment", "--out", str(out), "data.synthetic_n=8", "data.image_size=32", "device=cpu",
                 f"data.cache_dir={tmp_path / 'cache'}", "segment.overlay_n=0"]) == 0
    now = load_model(out).segmenter.s
    assert now.hair_lines > 0 and now.flatten_light and now.ring_light < 1  # format 4: the steps on
    assert now.hair_fill == "average" and now.mask_opening > 0 and now.pale_rim > 0
    written = json.loads((out / "model.json").read_text())
    assert written["format_version"] == 5
    for version, keys in ((4, BEFORE_FORMAT_5), (3, {**BEFORE_FORMAT_4, **BEFORE_FORMAT_5}),
                          (2, {**BEFORE_SHIFT_STEPS, **BEFORE_FORMAT_4, **BEFORE_FORMAT_5})):
        meta = json.loads(json.dumps(written))
        meta["format_version"] = version
        for key in keys:
            del meta["segment_config"]["segment"][key]
        (out / "model.json").write_text(json.dumps(meta))
        old = load_model(out).segmenter.s
        assert {k: getattr(old, k) for k in keys} == keys, version
    # an older file that sets a key keeps it (the older values fill in only what a file lacks)
    meta = json.loads(json.dumps(written))
    meta["format_version"] = 3
    meta["segment_config"]["segment"]["mask_opening"] = 1.5
    (out / "model.json").write_text(json.dumps(meta))
    assert load_model(out).segmenter.s.mask_opening == 1.5


def test_a_capped_working_size_segments_shrunk_and_returns_full_size_masks():
    """segment.max_work_size: a larger image runs every step shrunk to the cap, and its scores and masks come
    back at the image's size, close to the full-size run's; an image no larger than the cap runs as it is."""
    import pytest

    from ssl_derm.config import ConfigError, load_config
    from ssl_derm.segmenters.base import build_segmenter
    from ssl_derm.segmenters.config import SegmentConfig, check_segment_config
    from ssl_derm.segmenters.pipeline import predict_batch

    def seg(*extra):
        return build_segmenter(check_segment_config(load_config(SegmentConfig, None, list(extra))))

    img, disc = _skin(128)
    full_scores, full = predict_batch(seg("segment.max_work_size=0"), img)
    scores, capped = predict_batch(seg("segment.max_work_size=64"), img)
    assert capped.shape == full.shape == (1, 128, 128) and scores.shape == (1, 128, 128) and scores.dtype == np.float32
    jac = lambda a, b: (a & b).sum() / max((a | b).sum(), 1)
    assert jac(full[0], disc) > 0.9 and jac(capped[0], disc) > 0.85 and jac(capped[0], full[0]) > 0.85
    same = predict_batch(seg("segment.max_work_size=128"), img)[1]
    assert np.array_equal(same, full)
    with pytest.raises(ConfigError, match="max_work_size"):
        check_segment_config(load_config(SegmentConfig, None, ["segment.max_work_size=8"]))


def test_long_lines_keeps_hairs_and_drops_short_marks():
    """Only the long parts of a hair map are filled by the average: a small elongated lesion or a dot that the
    line detector marks is left to the rest of the pipeline."""
    from ssl_derm.segmenters.colour import long_lines

    hair = np.zeros((1, 64, 64), bool)
    hair[0, 10:13, 2:62] = True  # a hair across the frame
    hair[0, 30:40, 30:36] = True  # a short mark (a small lesion taken for a line)
    kept = long_lines(hair, 33)[0]
    assert kept[10:13, 2:62].all() and not kept[30:40, 30:36].any()
    assert not long_lines(np.zeros((2, 64, 64), bool), 33).any()
    # a mark joined to the line by the one-pixel rim of the map only: found apart on the shrunk map
    hair[0, 13:30, 32] = True  # a one-pixel thread from the line down to the mark
    assert not long_lines(hair, 33)[0, 30:40, 30:36].any()
    assert long_lines(hair, 33, shrink=False)[0, 30:40, 30:36].all()
