"""Checks of what is ours in the newer method families (the losses are lightly's): the KoLeo weighting on
DINO and iBOT, iBOT's patch masks, SwAV's frozen prototypes and queue, and the CNN error of iBOT."""
import pytest
import torch
import torch.nn.functional as F

from ssl_derm.encoders import create_encoder
from ssl_derm.methods import MethodError, build_method
from ssl_derm.methods.ibot import patch_mask
from support import RESNET, VIT, tiny_cfg


def timm_tokens(encoder, images, mask=None, token=None):
    """Tokens from timm's own ``forward_features`` (not the methods' ``vit_tokens``): masked patch embeddings are
    replaced by ``token`` with a hook on the patch embedding, before the position embedding."""
    vit = encoder.model
    hook = None
    if mask is not None:
        hook = vit.patch_embed.register_forward_hook(
            lambda mod, inp, out: torch.where(mask.view(*out.shape[:-1], 1), token.to(out.dtype), out))
    try:
        return vit.forward_features(images)
    finally:
        if hook is not None:
            hook.remove()


def koleo_by_hand(f):
    f = F.normalize(f.float(), dim=1)
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    return -torch.log(d.min(dim=1).values + 1e-8).mean()


@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_koleo_adds_weight_times_mean_per_view_koleo(method):
    torch.manual_seed(0)
    enc = create_encoder(VIT, 32)
    m = build_method(tiny_cfg(method, koleo_weight=0.0), enc, 10).eval()  # eval: no dropout, fixed features
    views = [torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)]
    centres = {k: v.clone() for k, v in m.state_dict().items() if "center" in k}

    def loss_at(w):
        m.cfg.koleo_weight = w
        m.load_state_dict(centres, strict=False)  # the losses move their centre each call
        torch.manual_seed(3)  # the same iBOT mask each call
        return float(m.training_step(views, 0)[0])

    w = 0.7
    with torch.no_grad():
        torch.manual_seed(3)
        if method == "ibot":
            mask = m.random_mask(10, 2, 2, "cpu").mask.flatten(1)
            feats = enc.pool(timm_tokens(enc, torch.cat(views), mask, m.mask_token))
        else:
            feats = enc(torch.cat(views))
        expected = w * (koleo_by_hand(feats[:5]) + koleo_by_hand(feats[5:])) / 2
    assert loss_at(w) - loss_at(0.0) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_ibot_patch_mask_counts_and_shapes():
    torch.manual_seed(0)
    mask = patch_mask(6, 4, 5, prob=1.0, ratio=(0.25, 0.25), device="cpu").mask
    assert mask.shape == (6, 4, 5) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == 5).all()  # round(0.25 * 20)
    assert len({tuple(r.tolist()) for r in mask.flatten(1)}) == 6  # each image draws its own positions
    freq = patch_mask(2000, 4, 5, prob=1.0, ratio=(0.25, 0.25), device="cpu").mask.float().mean(0)
    assert ((freq > 0.2) & (freq < 0.3)).all(), freq  # every position equally likely, not a fixed block
    for seed in range(20):  # rarely masked: still at least one patch in the batch, never a whole image
        torch.manual_seed(seed)
        mask = patch_mask(3, 2, 2, prob=0.01, ratio=(0.1, 0.9), device="cpu").mask
        assert int(mask.sum()) >= 1 and (mask.flatten(1).sum(1) < 4).all()


def test_ibot_patch_mask_index_and_weight_are_what_boolean_indexing_gives():
    for seed in range(5):
        torch.manual_seed(seed)
        drawn = patch_mask(7, 3, 4, prob=0.6, ratio=(0.1, 0.7), device="cpu")
        flat = drawn.mask.flatten()
        assert torch.equal(drawn.index, flat.nonzero().flatten())  # row-major, as tokens[mask] orders them
        per_image = drawn.mask.flatten(1).sum(1).clamp(min=1).float()
        assert torch.allclose(drawn.weight, (1 / per_image).expand(12, 7).T.flatten()[flat])


def test_ibot_student_sees_mask_tokens_teacher_does_not():
    torch.manual_seed(0)
    m = build_method(tiny_cfg("ibot", ibot_mask_prob=1.0, ibot_mask_ratio_min=0.5, ibot_mask_ratio_max=0.5),
                     create_encoder(VIT, 32), 10).eval()  # eval: no dropout, so only the mask token differs
    x = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    seen = {"teacher": [], "student": []}
    m.teacher_head.register_forward_hook(lambda mod, inp, out: seen["teacher"].append(inp[0].detach().clone()))
    m.head.register_forward_hook(lambda mod, inp, out: seen["student"].append(inp[0].detach().clone()))

    def step(token_value):
        for v in seen.values():
            v.clear()
        with torch.no_grad():
            m.mask_token.fill_(token_value)
        torch.manual_seed(1)  # the same patch mask each call
        return m.training_step(x, 0)[0], [t.clone() for t in seen["teacher"]], [t.clone() for t in seen["student"]]

    _, teacher_a, student_a = step(0.0)
    loss, teacher_b, student_b = step(5.0)
    assert len(teacher_a) == 2 and all(torch.equal(a, b) for a, b in zip(teacher_a, teacher_b))  # cls + patches
    assert len(student_a) == len(student_b) >= 1
    # every input of the student's head (its cls tokens, its masked patches) moves with the token value; the
    # tiny random ViT moves them by about 5e-5, far above float noise of an identical pass (0: teacher above)
    assert all(float((a - b).abs().max()) > 1e-5 for a, b in zip(student_a, student_b))
    loss.backward()
    assert float(m.mask_token.grad.abs().sum()) > 0


def test_ibot_needs_a_plain_vit():
    with pytest.raises(MethodError, match="ibot.*not a plain timm ViT.*dino"):
        build_method(tiny_cfg("ibot"), create_encoder(RESNET, 32), 10)


def test_swav_frozen_prototypes_get_zero_gradient_and_queue_fills():
    torch.manual_seed(0)
    m = build_method(tiny_cfg("swav", freeze_prototypes_steps=2, queue_length=12, queue_start_step=1),
                     create_encoder(RESNET, 32), 10)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16)]
    start = m.queue.bank.clone()
    loss, _ = m.training_step(views, 0)
    loss.backward()
    proto = m.prototypes.heads[0].weight
    assert proto.grad is not None and float(proto.grad.abs().sum()) == 0
    first = m.queue.bank.clone()
    assert torch.equal(first[:, 4:], start[:, :8])  # the batch went in front, the oldest 4 dropped
    m.zero_grad()
    with torch.no_grad():
        proto.mul_(3.0)  # as an optimiser step would: rows no longer of unit length
    loss, _ = m.training_step(views, 2)  # unfrozen, with the queue
    loss.backward()
    assert float(proto.grad.abs().sum()) > 0
    assert torch.equal(m.queue.bank[:, 4:], first[:, :8])  # the second batch in front of the first
    unit = m.prototypes.heads[0].weight.norm(dim=1)
    assert torch.allclose(unit, torch.ones_like(unit), atol=1e-5)  # normalised again at the start of this step


def test_swav_queue_is_per_rank_state_and_a_resume_continues_it(tmp_path):
    """The queue is no module buffer (DDP would overwrite each rank's with rank 0's) and the engine
    checkpoints it per rank: killed after step 3 and resumed, the run ends as the uninterrupted one."""
    from ssl_derm.config import TrainConfig
    from ssl_derm.engine import Engine, Hook
    from ssl_derm.methods.step import MethodStep

    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]

    class Kill(Hook):
        def after_step(self, engine, done):
            if done == 3:
                raise KeyboardInterrupt

    def run(ckpt, hooks=()):
        torch.manual_seed(0)
        m = build_method(tiny_cfg("swav", queue_length=8), create_encoder("test_resnet", 32), 10)
        assert not any("queue" in k for k in m.state_dict())
        cfg = TrainConfig(max_steps=5, batch_size=4, ckpt_every=2, log_every=1, warmup_steps=0, lr=1e-2)
        eng = Engine(m, cfg, "cpu", forward=MethodStep(m), rank_state=m.rank_state(), ckpt_dir=ckpt,
                     hooks=list(hooks), progress=False)
        return eng.fit(lambda module, step, micro: module(views, step)), m

    full, _ = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", [Kill()])
    resumed, m = run(tmp_path / "cut")
    assert resumed["resumed_from"] == 2
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)


def test_ibot_patch_term_by_hand():
    """loss(w) - loss(0) = w x the cross-entropy over masked patches only, each image weighted by 1/its count;
    the tokens come from timm's own forward, not the method's."""
    torch.manual_seed(0)
    enc = create_encoder(VIT, 32)
    m = build_method(tiny_cfg("ibot", ibot_mask_prob=1.0), enc, 10).eval()
    views = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    centres = {k: v.clone() for k, v in m.state_dict().items() if "center" in k}

    def loss_at(w):
        m.cfg.patch_loss_weight = w
        m.load_state_dict(centres, strict=False)
        torch.manual_seed(4)
        return float(m.training_step(views, 0)[0])

    with torch.no_grad():
        torch.manual_seed(4)
        mask = m.random_mask(6, 2, 2, "cpu").mask
        glob = torch.cat(views)
        t = m.teacher_head(timm_tokens(m.teacher_encoder, glob)[:, 1:][mask.flatten(1)])
        s = m.head(timm_tokens(enc, glob, mask.flatten(1), m.mask_token)[:, 1:][mask.flatten(1)])
        ce = -(torch.softmax(t / m.teacher_temp(0), -1) * torch.log_softmax(s / m.cfg.student_temp, -1)).sum(-1)
        per_image = mask.flatten(1).sum(1).float()
        weight = (1 / per_image).repeat_interleave(per_image.long())  # masked tokens come image by image
        expected = 1.5 * float((ce * weight).sum() / 6)
    assert loss_at(1.5) - loss_at(0.0) == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("overrides, key, rule, edge", [
    (["method.name=swav", "method.n_prototypes=0"], "method.n_prototypes", ">= 1", 1),
    (["method.name=swav", "method.temperature=0"], "method.temperature", "> 0", 1e-3),
    (["method.name=swav", "method.queue_length=-1"], "method.queue_length", ">= 0", 0),
    (["method.name=vicreg", "method.variance_weight=-1"], "method.variance_weight", ">= 0", 0),
    (["method.name=barlowtwins", "method.lambda_offdiag=-1"], "method.lambda_offdiag", ">= 0", 0),
    (["method.name=dino", "method.koleo_weight=-0.1"], "method.koleo_weight", ">= 0", 0),
    (["method.name=ibot", "method.patch_loss_weight=-1"], "method.patch_loss_weight", ">= 0", 0),
    (["method.name=densecl", "method.temperature=0"], "method.temperature", "> 0", 1e-3),
    (["method.name=densecl", "method.dense_weight=1.5"], "method.dense_weight", r"in \[0, 1\]", 1.0),
])
def test_method_settings_out_of_range_name_the_key(overrides, key, rule, edge):
    """The bad value is refused with the key and its rule; the value at the rule's edge loads, so the
    check sits exactly at the documented bound (a bound off by one either way fails one of the two)."""
    from ssl_derm.config import ConfigError, PretrainConfig, load_config

    with pytest.raises(ConfigError, match=f"'{key}': must be {rule}, got"):
        load_config(PretrainConfig, None, overrides)
    cfg = load_config(PretrainConfig, None, [overrides[0], f"{key}={edge}"])
    assert getattr(cfg.method, key.split(".")[1]) == edge


def test_densecl_matches_each_cell_to_the_most_similar_cell_of_the_other_view():
    from ssl_derm.methods.densecl import dense_pairs

    torch.manual_seed(0)
    b, c, h, w, d = 3, 8, 3, 3, 5
    f0 = torch.randn(b, c, h, w)
    perm = torch.randperm(h * w)  # view 1 = view 0's cells shuffled, as a crop and flip would move them
    f1 = f0.flatten(2)[:, :, perm].view(b, c, h, w)
    d0 = torch.randn(b, h * w, d)
    d1 = d0[:, perm]  # each cell keeps its own projection
    q, k = dense_pairs(torch.cat([f0, f1]), torch.cat([d0, d1]))
    assert q.shape == k.shape == (2 * b * h * w, d)
    assert torch.equal(q, k)  # every positive is the same cell seen in the other view
    # unrelated views: every key is, by hand, the other view's cell of the same image with the highest cosine
    # similarity of backbone features (another image's cells never pair, however similar)
    g0, g1, e0, e1 = torch.randn(b, c, h, w), torch.randn(b, c, h, w), torch.randn(b, h * w, d), torch.randn(b, h * w, d)
    g1[1] = g0[0] * 2  # image 1's view 1 is image 0's view 0: a match across images would pick its cells
    q2, k2 = dense_pairs(torch.cat([g0, g1]), torch.cat([e0, e1]))

    def nearest(fa, fb, eb):
        a, bb = F.normalize(fa.flatten(1).T, dim=1), F.normalize(fb.flatten(1).T, dim=1)
        return eb[(a @ bb.T).argmax(1)]

    want_q = torch.cat([e0, e1]).flatten(0, 1)
    want_k = torch.cat([torch.stack([nearest(g0[i], g1[i], e1[i]) for i in range(b)]),
                        torch.stack([nearest(g1[i], g0[i], e0[i]) for i in range(b)])]).flatten(0, 1)
    assert torch.equal(q2, want_q) and torch.equal(k2, want_k)
    assert not torch.equal(k2, torch.cat([e1, e0]).flatten(0, 1))  # not simply the same position


def ntxent_by_hand(a, b, temperature):
    """SimCLR's NT-Xent written out: 2N rows, each row's positive its partner in the other set, the
    other 2N - 2 rows its negatives."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(a)
    return F.cross_entropy(sim, torch.cat([torch.arange(n) + n, torch.arange(n)]))


def densecl_dense_term_by_hand(m, views):
    """The dense term written out: each cell of one view is paired with the cell of the other view (same
    image) whose backbone feature has the highest cosine similarity; NT-Xent of their dense projections,
    one direction at a time, averaged."""
    enc = m.encoder
    feats = enc.to_dense(enc.forward_features(torch.cat(views)))  # (2B, C, h, w)
    cells = feats.flatten(2).transpose(1, 2)  # (2B, hw, C)
    dense = m.dense_projection(cells)  # (2B, hw, D)
    (c0, c1), (d0, d1) = cells.chunk(2), dense.chunk(2)

    def matched(ca, cb, db):  # for each cell of ca, db at the most similar cell of cb
        best = (F.normalize(ca, dim=2) @ F.normalize(cb, dim=2).transpose(1, 2)).argmax(2)  # (B, hw)
        return torch.stack([db[i, best[i]] for i in range(len(db))])

    t = m.cfg.temperature
    return 0.5 * (ntxent_by_hand(d0.flatten(0, 1), matched(c0, c1, d1).flatten(0, 1), t)
                  + ntxent_by_hand(d1.flatten(0, 1), matched(c1, c0, d0).flatten(0, 1), t))


def test_densecl_dense_weight_mixes_the_terms_and_routes_the_gradients():
    from ssl_derm.augment import build_preset
    from ssl_derm.config import AugmentConfig, plugin_settings
    from ssl_derm.encoders import create_encoder

    views = build_preset("two_view", AugmentConfig(), 64)(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8))
    losses, grads, by_hand = {}, {}, {}
    for wgt in (0.0, 0.3, 1.0):
        torch.manual_seed(0)  # the same weights for every weight setting
        cfg = plugin_settings("method", "densecl", dict(proj_hidden_dim=16, proj_dim=8, dense_weight=wgt))
        m = build_method(cfg, create_encoder("resnet18", 64), max_steps=5).eval()
        loss, logs = m.training_step(views, 0)
        assert logs["cells"] == 4.0  # resnet18 at 64 px: a 2x2 last map
        loss.backward()
        losses[wgt] = float(loss.detach())
        grads[wgt] = {name: sum(float(p.grad.abs().sum()) for p in head.parameters() if p.grad is not None)
                      for name, head in (("global", m.projection), ("dense", m.dense_projection))}
        if wgt == 0.0:  # weight 0 is SimCLR itself: SimCLR's own class, given the same encoder and projector
            simclr = build_method(plugin_settings("method", "simclr", dict(proj_hidden_dim=16, proj_dim=8,
                                                                           temperature=cfg.temperature)),
                                  create_encoder("resnet18", 64), max_steps=5).eval()
            simclr.encoder.load_state_dict(m.encoder.state_dict())
            simclr.projection.load_state_dict(m.projection.state_dict())
            by_hand["global"] = float(simclr.training_step(views, 0)[0].detach())
            with torch.no_grad():  # every weight setting builds the same weights (seed 0)
                by_hand["dense"] = float(densecl_dense_term_by_hand(m, views))
    # each term against its own independent computation, mixed by the weight
    assert losses[0.0] == pytest.approx(by_hand["global"], rel=1e-5)
    assert losses[1.0] == pytest.approx(by_hand["dense"], rel=1e-5)
    assert losses[0.3] == pytest.approx(0.7 * by_hand["global"] + 0.3 * by_hand["dense"], rel=1e-5)
    assert losses[0.0] != pytest.approx(losses[1.0])
    # each head learns only from its own term
    assert grads[0.0]["dense"] == 0 and grads[0.0]["global"] > 0
    assert grads[1.0]["global"] == 0 and grads[1.0]["dense"] > 0
    assert grads[0.3]["global"] > 0 and grads[0.3]["dense"] > 0


def test_densecl_dense_loss_vanishes_when_every_cell_matches_only_itself():
    from ssl_derm.config import plugin_settings
    from ssl_derm.encoders import create_encoder

    b, hw = 2, 4
    cells = torch.eye(2 * b * hw)[: b * hw].view(b, hw, -1) * 10  # orthogonal cells, one per row
    feats = torch.cat([cells, cells]).transpose(1, 2).reshape(2 * b, -1, 2, 2)  # both views identical
    cfg = plugin_settings("method", "densecl", dict(proj_hidden_dim=16, proj_dim=8, temperature=0.05))
    m = build_method(cfg, create_encoder("resnet18", 32), max_steps=5)
    loss = float(m.dense_loss(feats, torch.cat([cells, cells])))
    # a positive that also stood among its query's negatives would hold the loss at ln 2 or more
    assert loss < 0.01, loss
