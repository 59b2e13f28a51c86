"""Every configs/pretrain/*.yaml parses into PretrainConfig and names a registered method, a usable
preset and a timm encoder; the small-encoder ones also run one step, shrunk by overrides."""
from pathlib import Path

import pytest
import timm
import torch

from ssl_derm.augment import build_preset, check_config
from ssl_derm.config import PretrainConfig, load_config
from ssl_derm.encoders import create_encoder
from ssl_derm.methods import build_method
from ssl_derm.registry import get, names

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "ssl_derm" / "configs" / "pretrain").glob("*.yaml"))
SMALL = ("resnet18", "vit_tiny_patch16_224")
SHRINK = ["data.image_size=32", "method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
          "method.dino_out_dim=32", "method.decoder_dim=32", "method.decoder_depth=1", "method.mask_patch_size=16",
          "augment.local_crop_size=16", "augment.n_local_crops=2"]



def test_there_are_configs_for_every_method():
    methods = {p.name.split("_")[0] for p in CONFIGS}
    assert set(names("method")) <= methods
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_is_coherent(path):
    cfg = load_config(PretrainConfig, path)
    assert path.stem.startswith(cfg.method.name + "_")
    cls = get("method", cfg.method.name)
    preset = cfg.augment.preset or cls.default_preset
    assert preset in names("preset")
    check_config(cfg.augment, cfg.data.image_size)
    assert timm.is_model(cfg.encoder.name)
    assert cfg.data.image_size % 32 == 0 and cfg.train.max_steps > 0
    if cfg.method.name == "simmim":  # MAE has no mask_patch_size: it masks whole ViT patches
        assert cfg.data.image_size % cfg.method.mask_patch_size == 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_config(PretrainConfig, p).encoder.name in SMALL],
                         ids=lambda p: p.stem)
def test_small_config_runs_one_step(path):
    cfg = load_config(PretrainConfig, path, overrides=SHRINK, lenient=True)  # each method takes its SHRINK keys
    torch.manual_seed(0)
    encoder = create_encoder(cfg.encoder.name, cfg.data.image_size, drop_path_rate=cfg.encoder.drop_path_rate)
    method = build_method(cfg.method, encoder, cfg.train.max_steps)
    preset = build_preset(cfg.augment.preset or method.default_preset, cfg.augment, cfg.data.image_size)
    views = preset(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    loss, _ = method.training_step(views, 0)
    loss.backward()
    method.on_step_end(0)
    assert torch.isfinite(loss)
