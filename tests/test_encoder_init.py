"""encoder.init: a local timm state dict (safetensors or a weights_only torch file), key checks that name
the file, and timm's own weights failing with one clear line when the hub cannot be reached."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from ssl_derm.config import PretrainConfig, load_config
from ssl_derm.encoders import create_encoder
from ssl_derm.errors import EncoderError


def _same(model, state):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k in own)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_init_from_a_local_state_dict_with_its_classifier(tmp_path, fmt):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=7)  # a classifier, as a finetuned model has
    state = src.state_dict()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint: timm's layout
    enc = create_encoder("resnet18", 32, init=str(path))
    assert _same(enc.model, state) and not hasattr(enc.model.fc, "weight")  # the classifier was dropped
    random = create_encoder("resnet18", 32)
    assert not _same(random.model, state)


def test_init_resamples_a_vit_position_embedding(tmp_path):
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    save_file(src.state_dict(), str(tmp_path / "vit.safetensors"))
    enc = create_encoder("vit_tiny_patch16_224", 32, init=str(tmp_path / "vit.safetensors"))
    assert torch.equal(enc.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert enc.model.pos_embed.shape[1] == 1 + 4


def test_init_key_mismatch_names_the_file_and_the_count(tmp_path):
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(EncoderError, match=r"bad\.safetensors.*2 of \d+ keys do not match timm model 'resnet18' "
                                           r"\(1 missing, 1 unknown"):
        create_encoder("resnet18", 32, init=str(path))
    wrong = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet34", num_classes=0).state_dict(), str(wrong))
    with pytest.raises(EncoderError, match="other.safetensors.*keys do not match"):
        create_encoder("resnet18", 32, init=str(wrong))


def test_init_bad_files_and_values(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="junk.pth.*cannot be read"):
        create_encoder("resnet18", 32, init=str(junk))
    torch.save({"a": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(EncoderError, match="odd.pth.*state dict of tensors"):
        create_encoder("resnet18", 32, init=str(tmp_path / "odd.pth"))
    with pytest.raises(EncoderError, match="'nope.safetensors' is not a file, 'timm' or 'none'"):
        create_encoder("resnet18", 32, init="nope.safetensors")
    with pytest.raises(EncoderError, match="both set"):
        create_encoder("resnet18", 32, checkpoint=str(junk), init="timm")
    assert load_config(PretrainConfig, overrides=["encoder.init=timm"]).encoder.init == "timm"


def test_init_timm_offline_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EncoderError) as e:
        create_encoder("resnet18", 32, init="timm")
    msg = str(e.value)
    assert "\n" not in msg and "encoder.init=timm" in msg and "offline" in msg and "encoder.init=PATH" in msg
    with pytest.raises(EncoderError, match="no pretrained weights"):
        create_encoder("nf_resnet26", 32, init="timm")  # a timm model without published weights
