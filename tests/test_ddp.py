"""Two CPU ranks with the gloo backend through torchrun: the pretraining path under DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_rank_pretraining_with_gloo(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "pretrain" / "main.py"), "--out", str(out), "device=cpu", "data.images=[synthetic]",
           "data.synthetic_n=48", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
           "method.name=simclr", "encoder.name=resnet18", "train.max_steps=3", "train.batch_size=8",
           "method.proj_hidden_dim=32", "method.proj_dim=16", "train.ckpt_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 3
    assert (out / "encoder.safetensors").is_file() and (out / "checkpoints" / "last.pt").is_file()
    # logs from rank 0 only: one TensorBoard event file
    assert len(list((out / "tb").glob("events.*"))) == 1
