import pytest

from ssl_derm.config import ConfigError, PretrainConfig, load_config, parse_override


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 7\nencoder:\n  name: vit_tiny_patch16_224\n")
    cfg = load_config(PretrainConfig, f, ["train.batch_size=16", "data.images=[a, b]", "train.lr=0.5", "device=cpu"])
    assert cfg.train.max_steps == 7 and cfg.train.batch_size == 16 and cfg.train.lr == 0.5
    assert cfg.encoder.name == "vit_tiny_patch16_224"
    assert cfg.data.images == ["a", "b"]
    assert cfg.device == "cpu"
    # a single folder given as a string becomes a one-item list
    assert load_config(PretrainConfig, None, ["data.images=/x/y"]).data.images == ["/x/y"]
    assert load_config(PretrainConfig, None, ["data.masks=none"]).data.masks is None


@pytest.mark.parametrize("override, words", [
    (["train.max_stesp=3"], ["train.max_stesp", "max_steps"]),
    (["trian.max_steps=3"], ["trian", "train"]),
    (["train.max_steps=abc"], ["train.max_steps", "integer"]),
    (["train.amp=maybe"], ["train.amp", "true or false"]),
    (["data.on_bad=ignore"], ["data.on_bad", "skip"]),
    (["device=tpu"], ["device", "auto"]),
    (["train.batch_size=0"], ["train.batch_size", "positive"]),
    (["novalue"], ["novalue", "key.sub=value"]),
    (["train=3"], ["train", "mapping"]),
])
def test_bad_keys_and_values_are_named(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, override)
    for w in words:
        assert w in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, lst)


def test_override_parsing():
    assert parse_override("a.b=[1,2]") == (["a", "b"], [1, 2])
    assert load_config(PretrainConfig, None, ["train.lr=1e-3"]).train.lr == 1e-3
    assert parse_override("x=hello=world") == (["x"], "hello=world")
