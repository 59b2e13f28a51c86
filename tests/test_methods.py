"""Method contract over the registry (finite loss, gradients reach the encoder and only it, teachers
frozen and moving by EMA, the loss falls on a fixed batch) and method-specific checks."""
import pytest
import torch
import torch.nn.functional as F

from ssl_derm.augment import build_preset
from ssl_derm.config import AugmentConfig, ConfigError
from ssl_derm.encoders import create_encoder
from ssl_derm.methods import MethodError, build_method
from ssl_derm.methods.mocov3 import moco_v3_loss
from ssl_derm.registry import names

from support import RESNET, SWIN, VIT, images, tiny_cfg  # noqa: E402

CASES = [(m, e) for m in ("simclr", "mocov3", "byol", "dino", "barlowtwins", "vicreg", "swav") for e in (RESNET, VIT)] + [
    ("mae", VIT), ("simmim", VIT), ("simmim", RESNET), ("simmim", SWIN), ("ibot", VIT), ("densecl", RESNET), ("densecl", VIT)]


def test_cases_cover_the_registry():
    assert {m for m, _ in CASES} == set(names("method"))


@pytest.mark.parametrize("method,enc", CASES)
def test_method_contract(method, enc):
    torch.manual_seed(0)
    encoder = create_encoder(enc, 32)
    m = build_method(tiny_cfg(method), encoder, max_steps=20)
    assert m.encoder is encoder
    views = build_preset(m.default_preset, AugmentConfig(n_local_crops=2), 32)(images())
    teachers = {n: p for n, p in m.named_parameters() if n.startswith("teacher_")}
    assert all(not p.requires_grad for p in teachers.values())
    before = {n: p.detach().clone() for n, p in teachers.items()}
    trainable = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-3)
    losses = []
    for step in range(4):
        torch.manual_seed(1)  # the same masks every step: a fixed problem whose loss must fall
        loss, logs = m.training_step(views, step)
        assert loss.ndim == 0 and torch.isfinite(loss)
        # floats, or 0-dim device tensors the engine reads only when it logs (no host sync per step)
        assert all(isinstance(v, float) or (torch.is_tensor(v) and v.ndim == 0) for v in logs.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            # every trainable parameter gets a gradient (DDP needs it), the encoder a non-zero one
            missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
            assert sum(float(p.grad.abs().sum()) for p in encoder.parameters() if p.requires_grad) > 0
            assert all(p.grad is None for p in teachers.values())
        opt.step()
        m.on_step_end(step)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    if teachers:  # EMA moved the teacher, but only a little
        moved = [float((p - before[n]).abs().max()) for n, p in teachers.items()]
        assert max(moved) > 0


def test_momentum_and_teacher_temperature_schedules():
    m = build_method(tiny_cfg("dino", momentum=0.9, momentum_end=1.0, warmup_teacher_temp=0.02, teacher_temp=0.06,
                              warmup_teacher_temp_steps=10), create_encoder(RESNET, 32), max_steps=100)
    assert m.momentum(0) == pytest.approx(0.9) and m.momentum(100) == pytest.approx(1.0)
    assert 0.9 < m.momentum(50) < 1.0 and m.momentum(500) == pytest.approx(1.0)
    assert m.teacher_temp(0) == pytest.approx(0.02) and m.teacher_temp(5) == pytest.approx(0.04)
    assert m.teacher_temp(10) == pytest.approx(0.06) and m.teacher_temp(99) == pytest.approx(0.06)


def test_moco_v3_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    t = 0.5
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = qn @ kn.T / t
    expected = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2 * 2 * t
    assert float(moco_v3_loss(q, k, t)) == pytest.approx(float(expected), rel=1e-5)


def test_simmim_mask_ratio_and_loss_only_on_masked_pixels():
    m = build_method(tiny_cfg("simmim", simmim_mask_ratio=0.5, mask_patch_size=8), create_encoder(RESNET, 32), 10)
    cells = m.random_mask(3, 4, 4, "cpu")
    assert (cells.sum((1, 2)) == 8).all()
    # with a zero decoder the prediction is 0, so the loss is the mean |x| over masked pixels only
    torch.nn.init.zeros_(m.decoder.weight)
    torch.nn.init.zeros_(m.decoder.bias)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(5)
    loss, _ = m.training_step([x], 0)
    torch.manual_seed(5)
    pix = m.random_mask(2, 4, 4, "cpu").repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
    expected = (x.abs() * pix).sum() / (pix.sum() * 3)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    torch.manual_seed(5)
    loud, _ = m.training_step([x + 100 * (1 - pix)], 0)  # unmasked pixels changed: same loss
    assert float(loud) == pytest.approx(float(loss), rel=1e-5)


def test_mae_needs_a_plain_vit():
    for name in (RESNET, "vit_small_r26_s32_224"):
        with pytest.raises(MethodError, match="simmim"):
            build_method(tiny_cfg("mae"), create_encoder(name, 32), 10)


def test_config_and_view_errors():
    with pytest.raises(MethodError, match="mask_patch_size"):
        build_method(tiny_cfg("simmim", mask_patch_size=24), create_encoder(RESNET, 32), 10)
    with pytest.raises(ConfigError, match="method.name.*simclr"):  # an unknown name fails when the config loads
        tiny_cfg("simclrr")
    m = build_method(tiny_cfg("simclr"), create_encoder(RESNET, 32), 10)
    with pytest.raises(MethodError, match="augment.preset=two_view"):
        m.training_step([torch.randn(2, 3, 32, 32)], 0)


def test_simmim_freezes_what_the_dense_path_never_uses():
    enc = create_encoder("mobilenetv3_large_100", 32)
    m = build_method(tiny_cfg("simmim", mask_patch_size=8), enc, 10)
    assert any("conv_head" in n for n in m.frozen)
    assert not enc.model.conv_head.weight.requires_grad


def test_sync_batchnorm_flags_and_presets():
    from ssl_derm.registry import get

    flags = {n: get("method", n).sync_batchnorm_needed for n in names("method")}
    assert flags["simclr"] and flags["byol"] and flags["mocov3"] and flags["densecl"] and not flags["mae"]
    presets = {n: get("method", n).default_preset for n in names("method")}
    assert presets == {"simclr": "two_view", "mocov3": "two_view", "byol": "two_view", "dino": "multi_crop",
                       "mae": "masked", "simmim": "masked", "barlowtwins": "two_view", "vicreg": "two_view",
                       "swav": "multi_crop", "ibot": "multi_crop", "densecl": "two_view"}


def test_mae_freezes_vit_parts_it_never_uses():
    """A timm ViT with an fc_norm (avg-pool ViTs) would crash DDP under MAE: the norm never gets a
    gradient. MAE freezes what its forward does not use, as SimMIM does."""
    torch.manual_seed(0)
    encoder = create_encoder(VIT, 32)
    encoder.model.fc_norm = torch.nn.LayerNorm(encoder.model.embed_dim)  # what an avg-pool ViT has
    m = build_method(tiny_cfg("mae"), encoder, max_steps=2)
    assert any(n.startswith("model.fc_norm") for n in m.frozen)
    loss, _ = m.training_step(build_preset(m.default_preset, AugmentConfig(), 32)(images()), 0)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
