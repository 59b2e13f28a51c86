"""Engine checks that need a CUDA device (skipped without one; benchmarks/gpu_check.sh runs them)."""
import pytest
import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import Engine, Hook

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cfg(**kw):
    base = dict(max_steps=6, batch_size=8, lr=0.1, warmup_steps=1, ckpt_every=3, log_every=1000, clip_grad=1.0)
    base.update(kw)
    return TrainConfig(**base)


def _step(module, step, micro):
    g = torch.Generator(device="cuda").manual_seed(step)
    x = torch.randn(8, 16, device="cuda", generator=g)
    return module(x).float().pow(2).mean(), {}


class _Kill(Hook):
    def after_step(self, engine, done):
        if done == 4:
            raise KeyboardInterrupt


def test_resume_on_cuda_keeps_rng_and_adam_steps_on_the_cpu(tmp_path):
    torch.manual_seed(0)
    a = nn.Linear(16, 4)
    Engine(a, _cfg(), "cuda", ckpt_dir=tmp_path / "full").fit(_step)
    torch.manual_seed(0)
    b = nn.Linear(16, 4)
    with pytest.raises(KeyboardInterrupt):  # killed after step 4; the checkpoint of step 3 is kept
        Engine(b, _cfg(), "cuda", ckpt_dir=tmp_path / "cut", hooks=[_Kill()]).fit(_step)
    c = nn.Linear(16, 4)
    eng = Engine(c, _cfg(), "cuda", ckpt_dir=tmp_path / "cut")
    assert eng.resume() == 3  # used to crash: the numpy RNG key tensor was loaded onto the GPU
    steps = [s["step"] for s in eng.optimizer.state.values()]
    assert steps and all(s.device.type == "cpu" for s in steps)  # no two syncs per parameter per step
    eng.fit(_step)
    assert torch.allclose(a.weight, c.weight, atol=1e-6)


class _SyncCheck(Hook):
    """Turns CUDA sync errors on for the steps before the last (whose log reads the loss)."""

    def on_start(self, engine):
        torch.cuda.set_sync_debug_mode("error")

    def after_step(self, engine, done):
        if done == engine.max_steps - 1:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_engine_steps_never_sync_the_host(precision):
    torch.manual_seed(0)
    try:
        Engine(nn.Linear(16, 4), _cfg(precision=precision, ckpt_every=0), "cuda", hooks=[_SyncCheck()],
               progress=False).fit(_step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fp16_with_scaler_trains_on_cuda():
    torch.manual_seed(0)
    m = nn.Linear(16, 4)
    before = m.weight.detach().clone()
    out = Engine(m, _cfg(precision="fp16", ckpt_every=0, log_every=1), "cuda", progress=False).fit(_step)
    assert torch.isfinite(torch.tensor(out["final_loss"])) and not torch.equal(before, m.weight.detach().cpu())
