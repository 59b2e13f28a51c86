"""method.lesion_weight: views carry their own warped lesion masks, the term reads the encoder's stage at
method.lesion_stride through a hook, trains only what lies before it, learns where the lesion is, and
stops with a message where it cannot work."""
import json

import pytest
import torch

from ssl_derm.augment import AugmentError, build_preset, denormalize
from ssl_derm.config import AugmentConfig, ConfigError, plugin_settings
from ssl_derm.encoders import create_encoder
from ssl_derm.methods import MethodError, build_method, lesion_term

QUIET = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def blobs(b=8, size=32, seed=0):
    """(B, 4, S, S) uint8: dark discs (the lesions) on light skin, the disc as the 4th channel."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.empty(b, 4, size, size, dtype=torch.uint8)
    for i in range(b):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
        r = int(torch.randint(size // 6, size // 3, (1,), generator=g))
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        skin = 200 + torch.randint(0, 40, (3, size, size), generator=g)
        lesion = 60 + torch.randint(0, 40, (3, size, size), generator=g)
        x[i, :3] = torch.where(disc, lesion, skin).to(torch.uint8)
        x[i, 3] = disc.to(torch.uint8)
    return x


def method_with_term(name="simclr", weight=1.0, stride=8, enc="resnet18", size=32):
    cfg = plugin_settings("method", name, dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32,
                                                lesion_weight=weight, lesion_stride=stride), lenient=True)
    method = build_method(cfg, create_encoder(enc, size), 100)
    lesion_term.attach(method, "two_view")
    return method


def test_views_carry_masks_warped_with_their_own_geometry():
    x = blobs()
    x[:, 0] = x[:, 3] * 255  # red channel = the mask: the warped red must equal the warped mask
    preset = build_preset("two_view", AugmentConfig(**QUIET), 24)
    preset.keep_masks = True
    torch.manual_seed(1)
    views = preset(x)
    masks = preset.last_masks
    assert masks.shape == (2 * 8, 1, 24, 24)
    red = denormalize(torch.cat(views), preset.cfg)[:, :1]
    assert torch.allclose(red, masks, atol=2e-3)
    assert 0.05 < float(masks.mean()) < 0.95
    # asking for the masks changes no view, with the colour ops on as well
    for cfg in (AugmentConfig(**QUIET), AugmentConfig()):
        p = build_preset("two_view", cfg, 24)
        torch.manual_seed(4)
        plain = p(x)
        p.keep_masks = True
        torch.manual_seed(4)
        kept = p(x)
        assert all(torch.equal(a, b) for a, b in zip(plain, kept))


def test_the_term_trains_the_stages_before_its_stride_and_not_after():
    torch.manual_seed(0)
    x = blobs(6)
    preset = build_preset("two_view", AugmentConfig(**QUIET), 32)
    preset.keep_masks = True
    torch.manual_seed(2)
    views = preset(x)
    grads = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        m = method_with_term(weight=w, stride=8)  # resnet18: stride 8 is layer2
        loss, logs = lesion_term.training_step(m, views, 0, preset.last_masks)
        loss.backward()
        model = m.encoder.model
        # each stage's shortcut conv: timm zero-inits the last BN of every block, so the residual convs get no gradient at step 0
        grads[w] = {k: getattr(model, k)[0].downsample[0].weight.grad.clone() for k in ("layer2", "layer3", "layer4")}
        grads[w]["head"] = m.lesion_term.head.weight.grad
        assert 0.0 <= logs["lesion_cell_acc"] <= 1.0 and logs["loss_lesion"] > 0
    assert torch.equal(grads[0.0]["layer3"], grads[1.0]["layer3"])  # after the read-out: untouched
    assert torch.equal(grads[0.0]["layer4"], grads[1.0]["layer4"])
    assert not torch.allclose(grads[0.0]["layer2"], grads[1.0]["layer2"])  # before it: the term adds gradient
    assert float(grads[1.0]["head"].abs().sum()) > 0


def test_the_term_learns_where_the_lesion_is():
    torch.manual_seed(0)
    m = method_with_term(weight=1.0, stride=8)
    term = m.lesion_term
    opt = torch.optim.Adam(list(m.encoder.parameters()) + list(term.parameters()), lr=1e-3)
    preset = build_preset("two_view", AugmentConfig(**QUIET), 32)
    preset.keep_masks = True
    history = []
    for step in range(25):
        views = preset(blobs(8, seed=step))
        with term.catching():
            m.encoder(torch.cat(views))  # the term alone: the method's forward only feeds the hook
        loss, logs = term.loss(preset.last_masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cells = torch.nn.functional.adaptive_avg_pool2d(preset.last_masks, 4)
        history.append({**logs, "skin_only_acc": float((cells <= 0.5).float().mean())})
    def late(key):
        return sum(h[key] for h in history[-3:]) / 3

    assert late("loss_lesion") < 0.7 * sum(h["loss_lesion"] for h in history[:3]) / 3
    # well above answering "skin" everywhere (~0.8 of the cells): it finds the lesions
    assert late("lesion_cell_acc") > max(0.9, late("skin_only_acc") + 0.1)


@pytest.mark.parametrize("name,enc", [("byol", "resnet18"), ("vicreg", "resnet18"), ("densecl", "resnet18"),
                                      ("simclr", "vit_tiny_patch16_224")])
def test_other_two_view_methods_and_a_vit_take_the_term(name, enc):
    torch.manual_seed(0)
    m = method_with_term(name, stride=16, enc=enc)  # a ViT: its last block's patch tokens on their 2x2 grid
    preset = build_preset("two_view", AugmentConfig(**QUIET), 32)
    preset.keep_masks = True
    views = preset(blobs(4))
    loss, logs = lesion_term.training_step(m, views, 0, preset.last_masks)
    assert torch.isfinite(loss) and "loss_lesion" in logs
    loss.backward()
    assert m.lesion_term.head.weight.grad is not None


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"method.lesion_stride.*stride 64; its strides are 2, 4, 8, 16, 32"):
        method_with_term(stride=64)
    with pytest.raises(ConfigError, match="method.lesion_weight.*not 'multi_crop'"):
        m = build_method(plugin_settings("method", "simclr", dict(lesion_weight=1.0)), create_encoder("resnet18", 32), 10)
        lesion_term.attach(m, "multi_crop")
    with pytest.raises(ConfigError, match="method.lesion_weight.*>= 0"):
        lesion_term.LesionTerm(create_encoder("resnet18", 32), -1.0, 16)
    with pytest.raises(ConfigError, match="method.lesion_weight.*>= 0, got -0.5"):  # not a silent "off"
        lesion_term.wanted(plugin_settings("method", "simclr", {"lesion_weight": -0.5}))
    m = method_with_term()
    views = [torch.zeros(2, 3, 32, 32)] * 2
    with pytest.raises(MethodError, match="needs each view's lesion mask"):
        lesion_term.training_step(m, views, 0, None)
    with pytest.raises(MethodError, match="ran its encoder on 4 views but the batch holds 6"):
        lesion_term.training_step(m, views, 0, torch.zeros(6, 1, 32, 32))
    with pytest.raises(AugmentError, match="method.lesion_weight > 0 needs the lesion masks"):
        p = build_preset("two_view", AugmentConfig(), 32)
        p.keep_masks = True
        p(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_pretrain_with_the_lesion_term_end_to_end(tmp_path):
    from ssl_derm.cli import main

    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "device=cpu", "data.synthetic_n=24", "data.image_size=32",
            f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "train.batch_size=8",
            "method.proj_hidden_dim=32", "method.proj_dim=16", "monitor.every_steps=0", "method.lesion_weight=0.5",
            "method.lesion_stride=8"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
    last = metrics["loss_history"][-1]  # the term's own values are kept beside the total loss
    assert last["loss_lesion"] > 0 and 0 <= last["lesion_cell_acc"] <= 1
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    flat = json.dumps(list(_keys(state)))
    assert "lesion_term.head.weight" in flat  # the head is trained and resumed with the method
    # a changed weight on resume is a changed config: stop, name the key
    assert main(args[:-2] + ["method.lesion_weight=0.25", "method.lesion_stride=8", "train.max_steps=3"]) == 2


def _keys(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _keys(v, f"{prefix}{k}.")
    else:
        yield prefix



def test_pretrain_stops_before_any_work_where_the_term_cannot_run(tmp_path, capsys):
    from ssl_derm.cli import main

    code = main(["pretrain", "--out", str(tmp_path / "run"), "device=cpu", "data.synthetic_n=24", "data.image_size=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "method.name=dino", "augment.preset=multi_crop",
                 "method.lesion_weight=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "method.lesion_weight" in err and "not 'multi_crop'" in err
    assert not (tmp_path / "cache").exists()  # no image cache, no lesion masks computed first
