"""The default segmenter's steps against acquisition shift: white balance, hair and marker lines, a skin
ring that the lesion or ink reaches."""
import numpy as np

from ssl_derm.segmenters.colour import hair_map, inpaint_hair, shades_of_grey
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
    runs as it was trained: the steps off, not the new defaults that its segment_config lacks."""
    import json

    from ssl_derm.cli import main
    from ssl_derm.segmenters.config import BEFORE_SHIFT_STEPS
    from ssl_derm.serve.loaders import load_model

    out = tmp_path / "seg"
    assert main(["segment", "--out", str(out), "data.synthetic_n=8", "data.image_size=32", "device=cpu",
                 f"data.cache_dir={tmp_path / 'cache'}", "segment.overlay_n=0"]) == 0
    now = load_model(out).segmenter.s
    assert now.hair_lines > 0 and now.flatten_light and now.ring_light < 1  # format 3: the steps on
    meta = json.loads((out / "model.json").read_text())
    meta["format_version"] = 2
    for key in BEFORE_SHIFT_STEPS:
        del meta["segment_config"]["segment"][key]
    (out / "model.json").write_text(json.dumps(meta))
    old = load_model(out).segmenter.s
    assert {k: getattr(old, k) for k in BEFORE_SHIFT_STEPS} == BEFORE_SHIFT_STEPS
