"""CPU checks of the engine's GPU-facing parts: one permutation per epoch in CacheBatches, ranks placed
round the node's GPUs, rank-0 decisions reaching every rank, the RNG state of this GPU only, the mean
teacher's EMA copy in the student's memory format, cuDNN autotuning and TF32 set by the engine."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from ssl_derm.engine import batches as B
from ssl_derm.engine import distributed as D


def test_one_permutation_per_epoch(monkeypatch):
    calls = []
    real = np.random.default_rng
    monkeypatch.setattr(B.np.random, "default_rng", lambda seed: calls.append(tuple(seed)) or real(seed))
    cb = B.CacheBatches(np.zeros((40, 2, 2, 3), np.uint8), 4, "cpu", seed=3)
    first = [cb.indices_at(s).tolist() for s in range(20)]  # two epochs of 10 steps
    assert calls == [(3, 0), (3, 1)]
    again = B.CacheBatches(np.zeros((40, 2, 2, 3), np.uint8), 4, "cpu", seed=3)
    assert [again.indices_at(s).tolist() for s in (15, 2, 19)] == [first[15], first[2], first[19]]  # any order


def test_ranks_go_round_the_gpus_and_share_them_on_gloo():
    assert D.cuda_placement(0, 2, 1) == (0, "gloo") and D.cuda_placement(1, 2, 1) == (0, "gloo")
    assert D.cuda_placement(3, 4, 4) == (3, "nccl")
    assert D.cuda_placement(5, 8, 4) == (1, "gloo")
    with pytest.raises(RuntimeError, match="no visible GPU"):
        D.cuda_placement(0, 1, 0)


def test_from_rank0_without_a_group_runs_the_decision_and_raises_its_error():
    assert D.from_rank0(lambda: {"done": 1}) == {"done": 1}
    with pytest.raises(ValueError, match="stale"):
        D.from_rank0(lambda: (_ for _ in ()).throw(ValueError("stale")))


def test_rng_state_is_this_gpus_only_and_old_lists_still_load(monkeypatch):
    from ssl_derm.engine import checkpoint as C

    got = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state was saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: got.setdefault("set", []).append(int(s[0])))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    state = C.rng_state()
    assert int(state["cuda"][0]) == 7
    C.set_rng_state(state)
    # written with 2 GPUs visible, read with 2 (this rank's own) or 1 (the first)
    C.set_rng_state({**state, "cuda": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 4)
    C.set_rng_state({**state, "cuda": [torch.tensor([1], dtype=torch.uint8)]})
    assert got["set"] == [7, 2, 1]


def test_mean_teacher_copy_follows_the_students_memory_format():
    from timm.utils import ModelEmaV3

    from ssl_derm.evaluate.meanteacher import TeacherUpdate

    student = nn.Sequential(nn.Conv2d(3, 4, 3))
    hook = TeacherUpdate(ModelEmaV3(student), student)
    engine = types.SimpleNamespace(cfg=types.SimpleNamespace(channels_last=True), device=torch.device("cuda"))
    hook.on_start(engine)
    assert hook.ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_engine_turns_on_cudnn_autotuning_and_tf32():
    from ssl_derm.engine.trainer import fast_cuda_kernels

    was = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        fast_cuda_kernels()
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was


def test_row_batches_give_the_sampled_rows_in_order():
    from ssl_derm.models.features import rows_to_batch

    images = np.random.default_rng(0).integers(0, 256, (12, 3, 3, 3), dtype=np.uint8)
    rows = np.array([7, 2, 7, 11, 0])
    got = B.RowBatches(images, "cpu").get(rows)
    assert got.shape == (5, 3, 3, 3) and torch.equal(got, rows_to_batch(images, rows, "cpu"))
