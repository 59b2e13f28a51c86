"""Each plug-in owns its settings: a contract over every registry, and the loader's checks against the
chosen plug-in's keys."""
import dataclasses

import pytest

from ssl_derm.config import ConfigError, PretrainConfig, load_config, plugin_settings, read_yaml, to_dict
from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.evaluate.config import FinetuneConfig, load_finetune_config
from ssl_derm.registry import names, settings_class
from ssl_derm.segmenters.config import SegmentConfig

SECTIONS = {"method": (PretrainConfig, "method", "name"), "protocol": (FinetuneConfig, "protocol", "name"),
            "segmenter": (SegmentConfig, "segment", "method")}


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_every_plugin_has_settings_whose_defaults_load(kind):
    cls, section, key = SECTIONS[kind]
    for name in names(kind):
        settings = settings_class(kind, name)
        assert settings is not None and dataclasses.is_dataclass(settings), (kind, name)
        cfg = load_config(cls, None, [f"{section}.{key}={name}"])
        got = getattr(cfg, section)
        assert type(got) is settings and getattr(got, key) == name
        assert dataclasses.asdict(got) == dataclasses.asdict(plugin_settings(kind, name))
        again = load_config(cls, base=to_dict(cfg))  # dump -> load keeps the plug-in and its values
        assert getattr(again, section) == got


def test_presets_take_the_shared_augment_settings():
    from ssl_derm.config import AugmentConfig

    for name in names("preset"):
        s = settings_class("preset", name)
        assert s is None or issubclass(s, AugmentConfig)
        assert load_config(PretrainConfig, None, [f"augment.preset={name}"]).augment.preset == name
    with pytest.raises(ConfigError, match="augment.preset.*two_view"):
        load_config(PretrainConfig, None, ["augment.preset=three_view"])


def test_a_key_of_another_plugin_is_an_error_listing_the_chosen_ones():
    cfg = load_finetune_config(None, ["protocol.name=fixmatch", "protocol.threshold=0.7"])
    assert cfg.protocol.threshold == 0.7 and type(cfg.protocol).__name__ == "FixMatchSettings"
    with pytest.raises(ConfigError, match=r"protocol.threshold.*protocol 'knn'.*knn_k"):
        load_finetune_config(None, ["protocol.name=knn", "protocol.threshold=0.7"])
    with pytest.raises(ConfigError, match=r"method.temperature.*method 'mae'.*mask_ratio"):
        load_config(PretrainConfig, None, ["method.name=mae", "method.temperature=0.2"])
    with pytest.raises(ConfigError, match=r"segment.n_clusters.*contrast_em"):
        load_config(SegmentConfig, None, ["segment.n_clusters=3"])
    with pytest.raises(ConfigError, match="unknown protocol 'knm'; available:"):
        load_finetune_config(None, ["protocol.name=knm"])


def test_lenient_drops_only_other_plugins_keys():
    """A sweep or table that switches plug-ins over one base config: keys of other plug-ins of the kind
    are dropped, a key that no plug-in has is still an error."""
    cfg = load_finetune_config("configs/finetune/knn.yaml", ["protocol.name=linear"], lenient=True)
    assert type(cfg.protocol).__name__ == "LinearSettings" and cfg.protocol.balance == "none"
    assert not hasattr(cfg.protocol, "knn_k")
    with pytest.raises(ConfigError, match="protocol.knn_k"):
        load_finetune_config("configs/finetune/knn.yaml", ["protocol.name=linear"])
    with pytest.raises(ConfigError, match="protocol.tresh"):
        load_finetune_config(None, ["protocol.tresh=1"], lenient=True)


def test_plugin_range_checks_stay():
    with pytest.raises(ConfigError, match="protocol.threshold"):
        load_finetune_config(None, ["protocol.name=fixmatch", "protocol.threshold=1.5"])
    with pytest.raises(ConfigError, match="segment.feat_dim"):
        load_config(SegmentConfig, None, ["segment.method=gharawi", "segment.feat_dim=30", "segment.heads=4"])


def test_lenient_file_keeps_overrides_strict():
    """lenient="file": the file's keys of other plug-ins are dropped, an override of one is still an error."""
    cfg = load_config(FinetuneConfig, "configs/finetune/knn.yaml", ["protocol.name=fixmatch"], lenient="file")
    assert cfg.protocol.name == "fixmatch" and not hasattr(cfg.protocol, "knn_k")
    with pytest.raises(ConfigError, match="protocol.threshold.*knn"):
        load_config(FinetuneConfig, "configs/finetune/knn.yaml", ["protocol.threshold=0.5"], lenient="file")


def test_every_config_file_and_sweep_cell_loads(monkeypatch, tmp_path):
    """Every YAML under configs/ loads into its command's config, and every cell of every sweep file builds
    its configs (a sweep's shared keys reach the cells whose plug-in has them)."""
    from pathlib import Path

    from ssl_derm.commands.sweep.spec import _overrides, load_sweep, plan_cells

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # sweep files name their base configs relative to the repository
    encoder_file = export_encoder(create_encoder("resnet18", 32), tmp_path / "encoder.safetensors")
    classes = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "segment": SegmentConfig}
    for stage, cls in classes.items():
        files = sorted((root / "configs" / stage).glob("*.yaml"))
        assert files
        for path in files:
            assert dataclasses.is_dataclass(load_config(cls, path)), path
    for path in sorted((root / "configs" / "sweeps").glob("*.yaml")):
        needs_encoder = read_yaml(path).get("checkpoint", "") is None  # a study of an encoder the user gives
        spec = load_sweep(path, [f"checkpoint={encoder_file}"] if needs_encoder else [])
        down = spec["downstream"]
        for cell in plan_cells(spec):
            if cell["pretrain"] is not None:
                load_config(PretrainConfig, spec["pretrain"].get("config"), _overrides(cell["pretrain"]), lenient=True)
            cfg = load_config(classes[down], spec.get(down, {}).get("config"), _overrides(cell["downstream"]),
                              lenient=True)
            name = cell["values"].get(f"{down}.protocol.name")
            assert name is None or cfg.protocol.name == name
