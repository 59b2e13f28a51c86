import numpy as np
import pytest
import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import (CacheBatches, CheckpointError, ConfigMismatchError, Engine, Every, TrainingError,
                             load_checkpoint, save_checkpoint)
from ssl_derm.engine.checkpoint import rng_state, set_rng_state


class TinyMethod(nn.Module):
    """A regression toy: the engine is tested apart from any SSL method."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.encoder = nn.Linear(3 * 8 * 8, 4)
        self.nan_at = nan_at

    def forward(self, x, step):
        loss = self.encoder(x.flatten(1)).pow(2).mean() + 0.01 * torch.randn(()).abs()  # consumes RNG: resume must restore it
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        return loss


def _images(n=32):
    return np.random.default_rng(0).integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)


def _augment(x):
    return [x.float() / 255.0]


def _cfg(**kw):
    base = dict(max_steps=6, batch_size=4, lr=0.1, warmup_steps=2, ckpt_every=3, log_every=1, clip_grad=1.0)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_round_trip_is_atomic_and_safe(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "step": 5, "rng": rng_state()}
    path = save_checkpoint(tmp_path / "c" / "last.pt", state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    back = load_checkpoint(path)
    assert back["step"] == 5 and torch.equal(back["model"]["w"], state["model"]["w"])
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    s = rng_state()
    a = (torch.rand(3), np.random.rand(3))
    set_rng_state(s)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_batches_deterministic_and_sharded():
    imgs = _images(40)
    b = CacheBatches(imgs, 4, "cpu", seed=1)
    assert torch.equal(b.get(3), CacheBatches(imgs, 4, "cpu", seed=1).get(3))
    assert b.get(0).shape == (4, 3, 8, 8) and b.get(0).dtype == torch.uint8
    r0 = CacheBatches(imgs, 4, "cpu", seed=1, rank=0, world=2).indices_at(2)
    r1 = CacheBatches(imgs, 4, "cpu", seed=1, rank=1, world=2).indices_at(2)
    assert len(set(r0) & set(r1)) == 0 and len(r0) == len(r1) == 4
    # an epoch covers distinct images
    seen = np.concatenate([b.indices_at(s) for s in range(b.per_epoch)])
    assert len(set(seen.tolist())) == len(seen)
    with pytest.raises(ValueError, match="train.batch_size"):
        CacheBatches(imgs[:3], 4, "cpu")


def _train(out, cfg, method=None, hooks=(), config=None):
    torch.manual_seed(0)
    m = method or TinyMethod()
    batches = CacheBatches(_images(), cfg.batch_size, "cpu", seed=0)

    def step_fn(module, step, micro):
        return module(batches.get(step).float() / 255.0, step), {"batch_size": cfg.batch_size}

    engine = Engine(m, cfg, "cpu", hooks=hooks, ckpt_dir=out / "checkpoints", config=config or {"train": vars(cfg)})
    return m, engine.fit(step_fn)


class Kill(Exception):
    pass


def _kill_at(k):
    def fn(done):
        if done == k:
            raise Kill
    return Every(fn, 1)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    full, summary = _train(tmp_path / "full", _cfg())
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"]) and summary["resumed_from"] == 0
    with pytest.raises(Kill):
        _train(tmp_path / "killed", _cfg(), hooks=[_kill_at(5)])
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 3
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    resumed, s2 = _train(tmp_path / "killed", _cfg())
    assert s2["resumed_from"] == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert s2["loss_history"] == summary["loss_history"] and s2["final_loss"] == summary["final_loss"]
    # a finished run loaded again: same weights and the same summary, not NaN and an empty history
    again, s3 = _train(tmp_path / "killed", _cfg())
    assert s3["resumed_from"] == 6 and s3["final_loss"] == summary["final_loss"]
    assert s3["loss_history"] == summary["loss_history"]
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))


def test_resume_with_a_changed_config_stops_naming_the_keys(tmp_path):
    _train(tmp_path, _cfg(), config={"train": {"lr": 0.1, "max_steps": 6}, "seed": 0})
    with pytest.raises(ConfigMismatchError) as e:
        _train(tmp_path, _cfg(lr=0.2, max_steps=8), config={"train": {"lr": 0.2, "max_steps": 8}, "seed": 1})
    msg = str(e.value)
    assert "train.lr" in msg and "seed" in msg and "max_steps" not in msg and "--force" in msg
    # the step budget alone may change: the run continues
    _, s = _train(tmp_path, _cfg(max_steps=8), config={"train": {"lr": 0.1, "max_steps": 8}, "seed": 0})
    assert s["resumed_from"] == 6 and s["steps"] == 8


def _one_update(model, cfg, batches):
    """Weights after one engine step; ``batches[micro]`` (B, D) float inputs."""
    def step_fn(module, step, micro):
        return module(batches[micro]).pow(2).mean(), {}

    Engine(model, cfg, "cpu", progress=False).fit(step_fn)
    return model.weight.detach().clone()


def test_accumulation_matches_one_big_batch():
    """2 micro-batches of 4 give the update of one batch of 8 (a model without batch statistics)."""
    x = torch.randn(8, 5)
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    big = _one_update(_copy(base), _cfg(max_steps=1, batch_size=8, warmup_steps=0, clip_grad=0.0), [x])
    acc = _one_update(_copy(base), _cfg(max_steps=1, batch_size=4, accumulate=2, warmup_steps=0, clip_grad=0.0),
                      [x[:4], x[4:]])
    assert torch.allclose(big, acc, atol=1e-7) and not torch.equal(big, base.weight)


class Scale(nn.Module):
    """y = w * x elementwise: no op that autocast lowers, so fp16 autocast computes in float32 here."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, 5))

    def forward(self, x):
        return self.weight * x


def test_fp16_grad_scaler_step_equals_the_plain_step():
    """The loss scale is a power of two, so scaling and unscaling the gradients is exact."""
    x = torch.randn(8, 5)
    plain = _one_update(Scale(), _cfg(max_steps=1, warmup_steps=0, clip_grad=1.0), [x])
    scaled = Scale()
    cfg = _cfg(max_steps=1, warmup_steps=0, clip_grad=1.0, precision="fp16")
    eng_out = _one_update(scaled, cfg, [x])
    assert torch.equal(plain, eng_out)


def test_fp16_autocast_update_close_to_fp32():
    x = torch.randn(8, 5)
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    a = _one_update(_copy(base), _cfg(max_steps=1, warmup_steps=0), [x])
    b = _one_update(_copy(base), _cfg(max_steps=1, warmup_steps=0, precision="fp16"), [x])
    assert torch.allclose(a, b, atol=1e-2) and torch.isfinite(b).all()


def test_amp_alias_maps_onto_precision(monkeypatch):
    from ssl_derm.engine.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    with pytest.warns(FutureWarning, match="train.precision"):
        assert resolve_precision(_cfg(amp=False), torch.device("cuda")) == "fp32"
    assert resolve_precision(_cfg(), torch.device("cuda")) == "bf16"
    assert resolve_precision(_cfg(), torch.device("cpu")) == "fp32"


def test_auto_precision_is_fp16_where_bf16_is_only_emulated(monkeypatch):
    from ssl_derm.engine.precision import auto_precision

    # a V100/T4: torch emulates bf16 (True with emulation), the hardware has none
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert auto_precision(torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere+
    assert auto_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a torch without the argument
    assert auto_precision(torch.device("cuda")) == "fp16"


def test_frozen_features_autocast_follows_auto_precision(monkeypatch):
    from ssl_derm.engine.precision import autocast_for_inference

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    ctx = autocast_for_inference(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16


def _copy(m):
    import copy

    return copy.deepcopy(m)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, _cfg(max_steps=10), method=TinyMethod(nan_at=4))
    msg = str(e.value)
    assert "not finite" in msg and "step 4" in msg and "last.pt" in msg and "step 3" in msg and "train.lr" in msg
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_checkpoint_loads_on_the_cpu_with_each_ranks_rng(tmp_path):
    _train(tmp_path, _cfg())
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert len(ckpt["ranks"]) == 1 and ckpt["ranks"][0]["rng"]["numpy"]["keys"].device.type == "cpu"
    assert ckpt["config"]["train"]["max_steps"] == 6
    steps = [s["step"] for s in ckpt["optimizer"]["state"].values() if "step" in s]
    assert steps and all(torch.as_tensor(s).device.type == "cpu" for s in steps)


def test_prefetch_errors_reach_the_main_thread():
    class Broken:
        shape = (40, 8, 8, 3)

        def __len__(self):
            return 40

        def __getitem__(self, rows):
            raise OSError("read error on the cache file")

    b = CacheBatches(Broken(), 4, "cpu", seed=0)
    with pytest.raises(OSError, match="read error"):
        b._prefetched(0)
    b.close()


def test_resident_cache_upload_in_chunks_keeps_rows():
    """The whole-cache-on-GPU path copies chunk by chunk straight from the memmap (no full host copy)."""
    imgs = _images(10)
    rows = np.array([7, 1, 4, 9, 0])
    out = CacheBatches(imgs, 4, "cpu")._upload(rows, chunk=2)
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(imgs[rows]))


def test_lr_scales_scale_one_child_and_keep_timms_weight_decay_split():
    """lr_scales={"encoder": s}: the child trains at s x the scheduled LR at every step (timm's lr_scale),
    0 leaves it untouched; biases and 1-d weights get no weight decay."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    model.add_module("head", nn.Linear(4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4)
    cfg = _cfg(max_steps=3, ckpt_every=0, weight_decay=0.05, optimizer="adamw")
    seen = []

    def step_fn(module, step, micro):
        seen.append({round(g["lr_scale"], 3): g["lr"] for g in engine.optimizer.param_groups})
        return module(x).pow(2).mean(), {}

    engine = Engine(model, cfg, "cpu", progress=False, lr_scales={"encoder": 0.0})
    groups = engine.optimizer.param_groups
    assert sorted((g["lr_scale"], g["weight_decay"], len(g["params"])) for g in groups) == [
        (0.0, 0.0, 3), (0.0, 0.05, 1), (1.0, 0.0, 1), (1.0, 0.05, 1)]
    engine.fit(step_fn)
    assert all(lrs[0.0] == 0 and lrs[1.0] > 0 for lrs in seen[1:])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["head.weight"], after["head.weight"])

    torch.manual_seed(0)
    half = Engine(nn.Sequential(model.encoder, model.head), cfg, "cpu", progress=False, lr_scales={"0": 0.5})
    assert sorted({g["lr"] / half.optimizer.param_groups[-1]["lr"] for g in half.optimizer.param_groups}) in ([0.5, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"lr_scales names \[.decoder.\], not children"):
        Engine(model, cfg, "cpu", progress=False, lr_scales={"decoder": 0.1})

    class Tokens(nn.Module):  # a child that names a 2-d parameter as free of weight decay, as timm's ViTs do
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(4, 4))

        def no_weight_decay(self):
            return {"pos"}

    vit_like = nn.Sequential()
    vit_like.add_module("tokens", Tokens())
    vit_like.add_module("head", nn.Linear(4, 1))
    groups = Engine(vit_like, cfg, "cpu", progress=False, lr_scales={"tokens": 0.5}).optimizer.param_groups
    pos = next(g for g in groups if any(p is vit_like.tokens.pos for p in g["params"]))
    assert pos["weight_decay"] == 0.0 and pos["lr_scale"] == 0.5
