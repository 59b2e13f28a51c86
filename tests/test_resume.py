"""Runs killed and resumed end where uninterrupted ones do: finetune, FixMatch and self-training
(simulated kills, fixed seeds), and the finetune CLI contract with a real SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_derm.engine import Engine, Every, load_checkpoint
from ssl_derm.commands.finetune import run_finetune

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"seconds", "resumed_from_step", "train_seconds", "img_per_s", "seconds_per_image"}


class Kill(Exception):
    pass


def kill_engine_at(monkeypatch, done_at: int, name: str = ""):
    """Every Engine built from now on (whose name contains ``name``) raises Kill after step ``done_at``."""
    orig = Engine.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        if name in self.name:
            def fn(done):
                if done == done_at:
                    raise Kill
            self.hooks.append(Every(fn, 1))

    monkeypatch.setattr(Engine, "__init__", init)


def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def data():
    from test_protocols import data as make  # the same tiny synthetic set as the protocol tests

    return make.__wrapped__()


def _ft(protocol, **extra):
    from test_protocols import _cfg

    over = {"train.max_steps": 9, "train.ckpt_every": 3, "protocol.eval_every": 4, **extra}
    return _cfg(protocol, **over)


@pytest.mark.parametrize("protocol,extra", [("finetune", {}), ("fixmatch", {"protocol.threshold_mode": "freematch"})])
def test_finetune_and_fixmatch_killed_and_resumed_match_uninterrupted(protocol, extra, data, tmp_path, monkeypatch):
    ds, split = data
    full = run_finetune(_ft(protocol, **extra), tmp_path / "full", dataset=ds, split=split, quiet=True)
    assert full["resumed_from_step"] == 0
    with monkeypatch.context() as m:
        kill_engine_at(m, 5)
        with pytest.raises(Kill):
            run_finetune(_ft(protocol, **extra), tmp_path / "killed", dataset=ds, split=split, quiet=True)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 3
    torch.manual_seed(1234)
    np.random.seed(1234)  # nothing may depend on the process state: it all comes from the checkpoint
    resumed = run_finetune(_ft(protocol, **extra), tmp_path / "killed", dataset=ds, split=split, quiet=True)
    assert resumed["resumed_from_step"] == 3
    same_weights(tmp_path / "full" / "checkpoints" / "last.pt", tmp_path / "killed" / "checkpoints" / "last.pt")
    assert strip(resumed) == strip(full)
    # a finished run run again with the same fingerprint: its results are left as they are (not NaN or empty)
    again = run_finetune(_ft(protocol, **extra), tmp_path / "killed", dataset=ds, split=split, quiet=True)
    assert again["resumed_from_step"] == 3 and strip(again) == strip(full)
    saved = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert saved["info"]["val_history"] == full["info"]["val_history"]


def test_changed_config_refuses_to_resume(data, tmp_path):
    ds, split = data
    run_finetune(_ft("finetune"), tmp_path, dataset=ds, split=split, quiet=True)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(Exception, match=r"train.lr.*--force"):
        run_finetune(_ft("finetune", **{"train.lr": 0.5}), tmp_path, dataset=ds, split=split, quiet=True)
    assert (tmp_path / "config.yaml").read_text() == before  # the refused config is not left behind


def test_self_training_killed_and_resumed_matches_uninterrupted(tmp_path, monkeypatch):
    from test_segment_run import folder as make_folder
    from ssl_derm.config import load_config
    from ssl_derm.segmenters.config import SegmentConfig
    from ssl_derm.commands.segment import run_segment

    root = tmp_path / "lesions"
    root.mkdir()

    class F:
        def mktemp(self, _):
            return root

    folder = make_folder.__wrapped__(F())

    def cfg():
        return load_config(SegmentConfig, None, [
            f"data.images=[{folder / 'images'}]", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
            f"data.masks={folder / 'masks'}", "segment.overlay_n=2", "selftrain.rounds=2", "selftrain.image_size=32",
            "train.max_steps=4", "train.ckpt_every=2", "train.batch_size=4", "selftrain.decoder_widths=[8,8,8,8,8]",
            "encoder.name=test_resnet", "device=cpu"])

    full = run_segment(cfg(), tmp_path / "full")
    with monkeypatch.context() as m:
        kill_engine_at(m, 3, name="round 2")
        with pytest.raises(Kill):
            run_segment(cfg(), tmp_path / "killed")
    ck = tmp_path / "killed" / "checkpoints"
    assert load_checkpoint(ck / "round1" / "last.pt")["step"] == 4 and load_checkpoint(ck / "round2" / "last.pt")["step"] == 2
    torch.manual_seed(99)
    resumed = run_segment(cfg(), tmp_path / "killed")
    assert resumed["resumed_from_step"] > 0 and full["resumed_from_step"] == 0
    same_weights(tmp_path / "full" / "checkpoints" / "round2" / "last.pt", ck / "round2" / "last.pt")
    assert strip(resumed["stages"]) == strip(full["stages"]) and resumed["mean"] == full["mean"]


@pytest.mark.slow
def test_finetune_cli_survives_sigkill(tmp_path):
    """The resume contract (specified with 60 steps): killed with SIGKILL once a checkpoint exists, the same
    command resumes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssl_derm.cli", "finetune", "--config", str(ROOT / "configs/finetune/finetune.yaml"),
           "--out", str(out), "device=cpu", "data.image_size=32", "data.images=[synthetic]", "data.synthetic_n=80",
           f"data.cache_dir={tmp_path / 'cache'}", "encoder.name=test_resnet", "train.batch_size=8",
           "train.ckpt_every=5", "train.max_steps=30"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.is_file() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file(), "no checkpoint was written before the kill"
    done = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < done < 30
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from_step"] >= done > 0
    # --force discards the checkpoints and starts over
    res = subprocess.run([*cmd[:4], "--force", *cmd[4:-1], "train.max_steps=6"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 0
