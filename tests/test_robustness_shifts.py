"""Every registered acquisition shift: shapes and range, seeded reproducibility, severity monotone in a
quantity the shift is meant to change, and masks that stay aligned with the image."""
import pytest
import torch
import torch.nn.functional as F

from ssl_derm.robustness.shifts import SEVERITIES, get_shift, radius, shift_names


def _texture(n=3, size=64, seed=0):
    """float (n, 3, S, S) in [0.2, 0.8]: smooth random texture with a darker central disc (a lesion)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 2, size // 2, generator=g)  # detail at 2 px: each downscale factor loses more
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) * 0.3 + 0.4
    disc = (radius(size, size, "cpu") < 0.35).float()
    return (x - 0.2 * disc).clamp(0, 1), disc.expand(n, 1, size, size).clone()


def _lap(x):
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return F.conv2d(x, k, groups=3)[..., 2:-2, 2:-2].abs().mean().item()


def _mse(a, b):
    return ((a - b) ** 2).mean().item()


def _changed(a, b):
    return ((a - b).abs().amax(1) > 0.05).float().mean().item()


# shift -> quantity of (clean x, shifted x, shifted masks) that must grow with severity
INCREASING = {
    "downscale": lambda x, y, m: -_lap(y),  # fine detail is lost
    "upscale": lambda x, y, m: _mse(x, y),
    "zoom": lambda x, y, m: m.mean().item(),  # the lesion fills more of the frame
    "temperature": lambda x, y, m: ((y[:, 0] - y[:, 2]) - (x[:, 0] - x[:, 2])).mean((1, 2)).abs().mean().item(),
    "tint": lambda x, y, m: (y[:, 1] - x[:, 1]).mean((1, 2)).abs().mean().item(),
    "vignette": lambda x, y, m: -(y[..., :4, :4].mean() / y[..., 28:36, 28:36].mean()).item(),  # darker corners
    "blur": lambda x, y, m: -_lap(y),
    "jpeg": lambda x, y, m: _mse(x, y),
    "hair": lambda x, y, m: _changed(x, y),
    "ink": lambda x, y, m: _changed(x, y),
}


def test_every_shift_has_a_monotone_measure_and_the_suite_has_eight():
    assert len(shift_names()) >= 8
    assert set(shift_names()) == set(INCREASING)


@pytest.mark.parametrize("name", shift_names())
def test_shape_range_and_masks(name):
    x, m = _texture()
    s = get_shift(name)
    for sev in SEVERITIES:
        y, ym = s.apply(x, m, sev, [0, 1, 2])
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
        assert ym.shape == m.shape and set(ym.unique().tolist()) <= {0.0, 1.0}
        if not s.geometric:
            assert torch.equal(ym, m)  # colour, blur, hair, ink: the lesion outline stays where it was
        assert not torch.allclose(y, x, atol=1e-3)  # every severity changes the image
    y, ym = s.apply(x, None, 2, [0, 1, 2])  # a classifier's batch has no masks
    assert ym is None and y.shape == x.shape


@pytest.mark.parametrize("name", shift_names())
def test_seeded_reproducible(name):
    x, m = _texture()
    s = get_shift(name)
    a, _ = s.apply(x, m, 2, [5, 6, 7])
    b, _ = s.apply(x, m, 2, [5, 6, 7])
    assert torch.equal(a, b)
    # an image's draws depend on its own seed only, not on the batch it is in
    c, _ = s.apply(x[1:2], m[1:2], 2, [6])
    assert torch.allclose(a[1:2], c, atol=1e-5)


@pytest.mark.parametrize("name", ["hair", "ink", "temperature", "tint"])
def test_random_shifts_differ_by_seed(name):
    x, m = _texture(n=1)
    s = get_shift(name)
    outs = [s.apply(x, m, 2, [k])[0] for k in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", shift_names())
def test_severity_monotone(name):
    x, m = _texture()
    s = get_shift(name)
    q = []
    for sev in SEVERITIES:
        y, ym = s.apply(x, m, sev, [0, 1, 2])
        q.append(INCREASING[name](x, y, ym))
    assert q[0] < q[1] < q[2], (name, q)


def test_zoom_moves_masks_with_the_image():
    # an image that is its own mask: after the shift, the bright pixels must still be the mask's pixels
    _, m = _texture(n=2)
    m[1] = torch.roll(m[1], shifts=(9, -7), dims=(1, 2))  # an off-centre lesion, partly cut by the zoom
    x = m.expand(-1, 3, -1, -1).clone()
    for sev in SEVERITIES:
        y, ym = get_shift("zoom").apply(x, m, sev, [0, 1])
        agree = ((y[:, 0] > 0.5) == (ym[:, 0] > 0.5)).float().mean().item()
        assert agree > 0.995


def test_bad_input_is_refused():
    s = get_shift("blur")
    with pytest.raises(ValueError, match="severity"):
        s.apply(torch.rand(1, 3, 32, 32), None, 4, [0])
    with pytest.raises(ValueError, match="float"):
        s.apply(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), None, 1, [0])
    with pytest.raises(ValueError, match="seeds"):
        s.apply(torch.rand(2, 3, 32, 32), None, 1, [0])


def test_strokes_leaving_the_frame_are_not_drawn_along_its_edge():
    from ssl_derm.robustness.shifts import stroke_map

    pts = torch.stack([torch.full((50,), -5.0), torch.linspace(0, 31, 50)], 1)[None]  # a line above the image
    assert stroke_map(pts, 32, 32, 1.0).max() == 0
