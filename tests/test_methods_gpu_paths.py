"""What a GPU step needs from every method, checked on the CPU: no host sync inside the step (the
audit sees every op a GPU would stall the host for), and train.compile compiling the encoder on the
path the method really runs (MAE/SimMIM/iBOT through the ViT blocks, DenseCL through forward_features)."""
import pytest
import torch

from test_methods import images, tiny_cfg
from ssl_derm.augment import build_preset
from ssl_derm.config import AugmentConfig, TrainConfig
from ssl_derm.encoders import create_encoder
from ssl_derm.engine import Engine
from ssl_derm.engine.sync_audit import HostSyncAudit
from ssl_derm.methods import build_method
from ssl_derm.methods.step import MethodStep
from ssl_derm.registry import names

VIT_ONLY = {"mae", "ibot", "simmim"}  # simmim on a ViT: the token-mask path
CASES = sorted(names("method"))


def _method(name):
    torch.manual_seed(0)
    enc = create_encoder("test_vit" if name in VIT_ONLY else "test_resnet", 32)
    m = build_method(tiny_cfg(name, queue_length=8), enc, max_steps=20)
    # no local crops: iBOT's and DINO's global views alone must reach compiled code
    preset = build_preset(m.default_preset, AugmentConfig(n_local_crops=0), 32)
    return m, preset


@pytest.mark.parametrize("name", CASES)
def test_a_step_holds_no_host_sync(name):
    m, preset = _method(name)
    views = preset(images(b=4))
    for step in range(2):  # step 1: queues and centres already filled
        with HostSyncAudit() as audit:
            loss, logs = MethodStep(m)(views, step)
            loss.backward()
        assert not audit.found, f"{name}: {audit.report()}"
        assert all(not isinstance(v, float) or True for v in logs.values())


def test_the_audit_sees_item_float_bool_and_mask_indexing():
    x = torch.randn(5)
    for fn in (lambda: x.sum().item(), lambda: float(x.sum()), lambda: bool(x.sum() > 0), lambda: x[x > 0]):
        with HostSyncAudit() as audit:
            fn()
        assert audit.found
    with HostSyncAudit() as audit:
        torch.where(x > 0, x, 0.0).sum()
    assert not audit.found


@pytest.mark.parametrize("name", CASES)
def test_compile_compiles_the_encoder_on_the_path_the_method_runs(name):
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m, preset = _method(name)
    cfg = TrainConfig(max_steps=1, batch_size=4, ckpt_every=0, log_every=10 ** 9, compile=True, warmup_steps=0)
    x = images(b=4)
    teacher = getattr(m, "teacher_encoder", None)
    Engine(m, cfg, "cpu", forward=MethodStep(m), progress=False, compile_options={"backend": counting_backend},
           compile_modules=[e for e in (m.encoder, teacher) if e is not None]).fit(
        lambda module, step, micro: module(preset(x), step))
    torch._dynamo.reset()
    compute = [g for g in graphs if any(n.op in ("call_function", "call_module") for n in g.graph.nodes)]
    assert len(compute) >= 1, f"{name}: no compiled graph of the encoder ran"
