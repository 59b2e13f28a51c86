"""Two CPU ranks with the gloo backend through torchrun: pretraining, finetuning and the engine's
per-rank state under DDP."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_two_rank_pretraining_with_gloo(tmp_path):
    out = tmp_path / "run"
    res = _torchrun([str(ROOT / "pretrain" / "main.py"), "--out", str(out), "device=cpu", "data.images=[synthetic]",
                     "data.synthetic_n=48", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
                     "method.name=simclr", "encoder.name=resnet18", "train.max_steps=3", "train.batch_size=8",
                     "method.proj_hidden_dim=32", "method.proj_dim=16", "train.ckpt_every=2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 3
    assert (out / "encoder.safetensors").is_file() and (out / "checkpoints" / "last.pt").is_file()
    # logs from rank 0 only: one TensorBoard event file
    assert len(list((out / "tb").glob("events.*"))) == 1


@pytest.mark.slow
def test_engine_rank_states_and_shared_nan_flag(tmp_path):
    res = _torchrun([str(ROOT / "tests" / "ddp_engine_worker.py"), str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["n_rank_states"] == 2 and rep["rank_states_differ"]
        assert rep["restored_own_rng"]  # each rank gets its own state back, not rank 0's
        # the NaN happened on rank 1 only; both ranks stop, with the same message
        assert rep["nan_error"] and "not finite at step 1" in rep["nan_error"]
    assert reports[0]["nan_error"] == reports[1]["nan_error"]


@pytest.mark.slow
def test_two_rank_finetune_with_gloo(tmp_path):
    out = tmp_path / "ft"
    args = ["-m", "ssl_derm.cli", "finetune", "--config", str(ROOT / "configs" / "finetune" / "finetune.yaml"),
            "--out", str(out), "device=cpu", "data.images=[synthetic]", "data.synthetic_n=80", "data.image_size=32",
            f"data.cache_dir={tmp_path / 'cache'}", "encoder.name=test_resnet", "encoder.checkpoint=none",
            "train.batch_size=4", "train.max_steps=4", "train.ckpt_every=2", "protocol.eval_every=2",
            "split.fraction=1.0"]
    res = _torchrun(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["resumed_from_step"] == 0 and m["info"]["steps"] == 4
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["ranks"]) == 2 and ckpt["world_size"] == 2 and ckpt["step"] == 4
    # each rank drew its own augmentations: their saved RNG states differ
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    # run again into the same --out: rank 0 finds the finished run and every rank stops with it (a rank
    # that went on alone into DDP would leave the job with 'Connection closed by peer')
    again = _torchrun(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds this run" in again.stderr
