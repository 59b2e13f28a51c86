"""protocol.feature_pool: frozen features pooled over the annotation-free lesion mask."""
import numpy as np
import pytest
import torch

from ssl_derm.config import AugmentConfig, ConfigError
from ssl_derm.encoders import create_encoder, weighted_pool
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.models.features import FeatureCache, extract_features
from ssl_derm.commands.finetune import run_finetune
from test_protocols import _cfg, data  # noqa: F401  (the fixture)

SIZE = 32


def test_weighted_pool_by_hand():
    fmap = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    w = torch.zeros(1, 1, 4, 4)
    w[0, 0, :2, :2] = 1.0  # the top-left cell is all lesion, the others none
    assert float(weighted_pool(fmap, w)) == pytest.approx((1.0 * 1.001 + (2 + 3 + 4) * 0.001) / (1.001 + 3 * 0.001))
    w[0, 0, 0, 0] = 0.0  # 3 of its 4 pixels: the cell's weight is their mean
    assert float(weighted_pool(fmap, w)) == pytest.approx((1.0 * 0.751 + 9 * 0.001) / (0.751 + 0.003))
    assert float(weighted_pool(fmap, torch.zeros(1, 1, 4, 4))) == pytest.approx(2.5)  # no lesion: the plain mean


@pytest.mark.parametrize("stages", [1, 3])
def test_a_whole_image_mask_gives_the_average_and_a_part_does_not(stages):
    from ssl_derm.data.synth import synth_arrays

    images = synth_arrays(6, 64, seed=0)[0]  # 64 px: test_resnet's last map is 2x2
    torch.manual_seed(0)
    enc = create_encoder("test_resnet", 64)
    rows, aug = np.arange(6), AugmentConfig()
    avg = extract_features(enc, images, rows, aug, "cpu", l2=False, stages=stages)
    ones = np.ones(images.shape[:3], np.uint8)
    whole = extract_features(enc, images, rows, aug, "cpu", l2=False, stages=stages, pool="lesion", masks=ones)
    torch.testing.assert_close(whole, avg, atol=1e-5, rtol=1e-4)  # resnet's own pooling is the plain mean
    part = ones.copy()
    part[:, :, 32:] = 0  # left half only
    left = extract_features(enc, images, rows, aug, "cpu", l2=False, stages=stages, pool="lesion", masks=part)
    assert not torch.allclose(left, avg, atol=1e-3)
    both = extract_features(enc, images, rows, aug, "cpu", l2=False, stages=stages, pool="both", masks=part)
    torch.testing.assert_close(both, torch.cat([avg, left], 1))
    # d4: each mask turns with its view, so an image and its mask turned together give the same features
    d4 = extract_features(enc, images, rows, aug, "cpu", l2=False, stages=stages, tta="d4", pool="lesion", masks=part)
    turned = extract_features(enc, np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))), rows, aug, "cpu",
                              l2=False, stages=stages, tta="d4", pool="lesion",
                              masks=np.ascontiguousarray(np.rot90(part, 1, axes=(1, 2))))
    torch.testing.assert_close(turned, d4, atol=1e-4, rtol=1e-3)


def test_frozen_protocols_pool_over_the_default_segmenters_masks(data, tmp_path, monkeypatch):  # noqa: F811
    import ssl_derm.segmenters.archive_masks as am

    ds, split = data
    calls = []
    real = am.default_masks
    monkeypatch.setattr(am, "default_masks", lambda images: calls.append(len(images)) or real(images))
    cache = FeatureCache()
    for protocol in ("knn", "linear"):
        m = run_finetune(_cfg(protocol, **{"protocol.feature_pool": "lesion"}), tmp_path / protocol, dataset=ds,
                         split=split, quiet=True, feature_cache=cache)
        assert 0.0 <= m["balanced_accuracy"] <= 1.0
    assert calls == [len(ds.images)] * 2  # every row's mask, once per run (an array dataset has no mask cache)
    assert [k[-1] for k in cache._store] == ["lesion"]  # one extraction, shared, and not the avg one


def test_feature_pool_is_checked():
    with pytest.raises(ConfigError, match="protocol.feature_pool.*avg, lesion, both"):
        load_finetune_config(None, ["protocol.name=linear", "protocol.feature_pool=mask"])


def test_the_label_efficiency_benchmark_routes_protocol_keys_to_the_protocols_that_have_them():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "label_efficiency_ham10000.py"
    spec = importlib.util.spec_from_file_location("le_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base, routed = bench.route_overrides(["split.redraw_labelled=true", "protocol.feature_pool=lesion",
                                          "protocol.head_init=linear_probe"], ["knn", "linear", "finetune"])
    assert base == ["split.redraw_labelled=true"]
    assert routed == {"knn": ["protocol.feature_pool=lesion"], "linear": ["protocol.feature_pool=lesion"],
                      "finetune": ["protocol.head_init=linear_probe"]}
    with pytest.raises(SystemExit, match="protocol.feature_pool"):
        bench.route_overrides(["protocol.feature_pool=lesion"], ["finetune"])  # no chosen protocol has it


def test_a_lesion_pooled_result_goes_stale_when_the_default_segmenter_changes(data, tmp_path, monkeypatch):  # noqa: F811
    import ssl_derm.segmenters.archive_masks as am
    from ssl_derm.segmenters.config import SegmentConfig

    ds, split = data
    cfg = _cfg("linear", **{"protocol.feature_pool": "lesion"})
    first = run_finetune(cfg, tmp_path, dataset=ds, split=split, quiet=True)
    again = run_finetune(cfg, tmp_path, dataset=ds, split=split, quiet=True)  # the same: reused as it is
    assert again["fingerprint"] == first["fingerprint"] and "derived_sha256" in first["fingerprint"]
    changed = SegmentConfig()
    changed.segment.convex_hull = False
    monkeypatch.setattr(am, "_segment_config", lambda: changed)
    with pytest.raises(ConfigError, match="lesion masks' recipe"):
        run_finetune(cfg, tmp_path, dataset=ds, split=split, quiet=True)
    avg = run_finetune(_cfg("linear"), tmp_path / "avg", dataset=ds, split=split, quiet=True)
    assert "derived_sha256" not in avg["fingerprint"]  # plain pooling reads no masks
