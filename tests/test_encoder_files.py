"""Encoder files describe themselves: ``finetune`` and ``segment`` read ``encoder.name`` (and, for finetune,
the image size it was trained at) from ``encoder.safetensors`` when the user sets neither; a set
``encoder.name`` that contradicts the file is an error naming both."""
import json

import pytest
from safetensors import safe_open

from ssl_derm.cli import main
from ssl_derm.config import load_config
from ssl_derm.encoder_files import adopt_encoder_file
from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.errors import EncoderError
from ssl_derm.evaluate.config import FinetuneConfig

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    export_encoder(create_encoder(VIT, 32), path, method="simclr")
    return path


def test_the_file_names_its_architecture_size_and_method(vit_file):
    with safe_open(str(vit_file), framework="pt") as f:
        assert f.metadata() == {"timm_name": VIT, "img_size": "32", "method": "simclr"}


def test_finetune_without_encoder_name_runs_the_files_vit(tmp_path, vit_file, capsys):
    out = tmp_path / "knn"
    assert main(["finetune", "--config", "finetune/knn", "--out", str(out), f"encoder.checkpoint={vit_file}",
                 "data.synthetic_n=60", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["encoder"]["name"] == VIT and m["encoder"]["image_size"] == 32  # knn.yaml says resnet18 at 96 px
    assert m["encoder"]["from_encoder_file"] == ["data.image_size", "encoder.name"]


def test_a_contradicting_encoder_name_names_both(tmp_path, vit_file, capsys):
    assert main(["finetune", "--config", "finetune/knn", "--out", str(tmp_path / "x"), f"encoder.checkpoint={vit_file}",
                 "encoder.name=resnet18", "data.synthetic_n=60", f"data.cache_dir={tmp_path / 'cache'}"]) != 0
    err = capsys.readouterr().err
    assert "encoder.name='resnet18'" in err and VIT in err and "Traceback" not in err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_set_keys_win_and_packaged_files_are_defaults(tmp_path, vit_file):
    """A user's own config file and overrides are 'set'; a packaged config's values are defaults."""
    cfg = load_config(FinetuneConfig, "finetune/knn", [f"encoder.checkpoint={vit_file}", "data.image_size=48"])
    assert adopt_encoder_file(cfg) == {"encoder.name": VIT} and cfg.data.image_size == 48  # another size is a choice
    own = tmp_path / "mine.yaml"
    own.write_text(f"encoder:\n  name: resnet18\n  checkpoint: {vit_file}\n")
    with pytest.raises(EncoderError, match="contradicts"):
        adopt_encoder_file(load_config(FinetuneConfig, own))
    same = load_config(FinetuneConfig, "finetune/knn", [f"encoder.checkpoint={vit_file}", f"encoder.name={VIT}"])
    assert adopt_encoder_file(same) == {"data.image_size": 32}
    assert adopt_encoder_file(load_config(FinetuneConfig, "finetune/knn")) == {}  # random init: nothing to read


def test_a_missing_encoder_file_names_the_key(tmp_path):
    cfg = load_config(FinetuneConfig, "finetune/knn", [f"encoder.checkpoint={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(EncoderError, match="encoder.checkpoint .* does not exist"):
        adopt_encoder_file(cfg)


def test_label_efficiency_keeps_what_the_user_set(tmp_path, vit_file):
    """The table's cells are built from the user's config: a set encoder.name that contradicts the file is
    still an error there, not silently replaced by the file's."""
    from ssl_derm.commands.label_efficiency import run_label_efficiency

    base = load_config(FinetuneConfig, "finetune/knn", ["encoder.name=resnet18", "data.synthetic_n=60",
                                                        f"data.cache_dir={tmp_path / 'cache'}", "device=cpu"])
    with pytest.raises(EncoderError, match="contradicts"):
        run_label_efficiency(base, vit_file, [1.0], ["knn"], [0], tmp_path / "le", inits=("pretrained",))
