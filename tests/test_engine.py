import numpy as np
import pytest
import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import CacheBatches, CheckpointError, TrainingError, fit, load_checkpoint, save_checkpoint
from ssl_derm.engine.checkpoint import rng_state, set_rng_state


class TinyMethod(nn.Module):
    """A regression toy with the method interface: the engine is tested apart from any SSL method."""

    default_preset = "eval"

    def __init__(self, nan_at=None):
        super().__init__()
        self.encoder = nn.Linear(3 * 8 * 8, 4)
        self.nan_at = nan_at

    def training_step(self, views, step):
        x = views[0].flatten(1)
        loss = self.encoder(x).pow(2).mean() + 0.01 * torch.randn(()).abs()  # consumes RNG: resume must restore it
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"sq": float(loss.detach())}

    def on_step_end(self, step):
        pass


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


def _train(tmp_path, cfg, method=None, monitor=None):
    torch.manual_seed(0)
    m = method or TinyMethod()
    return m, fit(m, CacheBatches(_images(), cfg.batch_size, "cpu", seed=0), _augment, cfg, tmp_path,
                  torch.device("cpu"), monitor=monitor)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    full, summary = _train(tmp_path / "full", _cfg())
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"])

    def kill(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", _cfg(), monitor=kill)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 3
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    resumed = TinyMethod()
    s2 = fit(resumed, CacheBatches(_images(), 4, "cpu", seed=0), _augment, _cfg(), tmp_path / "killed",
             torch.device("cpu"))
    assert s2["resumed_from"] == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, _cfg(max_steps=10), method=TinyMethod(nan_at=4))
    msg = str(e.value)
    assert "not finite" in msg and "step 4" in msg and "last.pt" in msg and "step 3" in msg and "train.lr" in msg
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
