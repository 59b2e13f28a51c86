"""Every supported encoder family under the two methods that stress encoders most: DINO (global and
smaller local crops through one encoder) and SimMIM (dense last feature map, masking), one step each."""
import pytest
import torch

from ssl_derm.augment import build_preset
from ssl_derm.config import AugmentConfig, plugin_settings
from ssl_derm.encoders import create_encoder
from ssl_derm.methods import build_method

ENCODERS = ["resnet50", "densenet121", "mobilenetv3_large_100", "efficientnet_b0", "vit_small_patch16_224",
            "vit_base_patch16_224", "swin_tiny_patch4_window7_224", "vit_small_r26_s32_224"]



@pytest.mark.parametrize("enc", ENCODERS)
def test_dino_and_simmim_step(enc):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for name in ("dino", "simmim"):
        encoder = create_encoder(enc, 64)
        cfg = plugin_settings("method", name, dict(proj_hidden_dim=32, proj_dim=16, dino_out_dim=32, mask_patch_size=32),
                              lenient=True)
        m = build_method(cfg, encoder, 10)
        views = build_preset(m.default_preset, AugmentConfig(n_local_crops=2, local_crop_size=32), 64)(x)
        loss, _ = m.training_step(views, 0)
        assert torch.isfinite(loss)
        loss.backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (name, missing[:5])
