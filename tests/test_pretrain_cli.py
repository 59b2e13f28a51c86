"""`ssl-derm pretrain` end to end: outputs, every method's config, timm loading of the export, kill + resume."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from ssl_derm.cli import main
from ssl_derm.encoders import create_encoder
from ssl_derm.registry import names, settings_class

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "ssl_derm" / "configs" / "pretrain").glob("*.yaml"))


def _tiny(tmp_path, method="simclr", **extra):
    """Tiny-run overrides; of the method.* keys only those ``method`` has (another method's key is an error)."""
    keys = {"device": "cpu", "data.synthetic_n": 48, "data.image_size": 32, "data.cache_dir": str(tmp_path / "cache"),
            "train.max_steps": 2, "train.batch_size": 8, "method.proj_hidden_dim": 32, "method.proj_dim": 16,
            "method.pred_hidden_dim": 32, "method.dino_out_dim": 64, "method.decoder_dim": 32,
            "method.decoder_depth": 1, "augment.n_local_crops": 2, "train.log_every": 1, "train.image_log_every": 1,
            "monitor.every_steps": 1, "monitor.max_images": 40}
    keys.update(extra)
    own = {f.name for f in dataclasses.fields(settings_class("method", method))}
    return [f"{k}={v}" for k, v in keys.items() if not k.startswith("method.") or k.split(".", 1)[1] in own]


def _config_for(method: str) -> Path:
    """The lightest shipped config of ``method`` (a resnet18 or vit_tiny one when there is one)."""
    mine = [c for c in CONFIGS if c.stem.startswith(method + "_")]
    assert mine, f"no configs/pretrain/{method}_*.yaml"
    for pref in ("resnet18", "vit_tiny"):
        for c in mine:
            if pref in c.stem:
                return c
    return mine[0]


@pytest.mark.parametrize("method", names("method"))
def test_every_method_config_writes_the_run_folder(tmp_path, method):
    out = tmp_path / "run"
    overrides = _tiny(tmp_path, method)
    cfg = _config_for(method)
    if "vit" in cfg.stem or "swin" in cfg.stem:
        overrides.append("encoder.name=vit_tiny_patch16_224")
    assert main(["pretrain", "--config", str(cfg), "--out", str(out), *overrides]) == 0
    for f in ("config.yaml", "version.json", "metrics.json", "encoder.safetensors", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    assert list((out / "tb").glob("events.*"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["steps"] == 2 and m["knn_monitor"]
    assert json.loads((out / "version.json").read_text())["ssl_derm"]


def test_exported_encoder_loads_in_plain_timm(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path), "method.name=simclr", "encoder.name=resnet18"]) == 0
    path = out / "encoder.safetensors"
    plain = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0)
    ours = create_encoder("resnet18", 32, checkpoint=str(path))
    plain.eval(), ours.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), ours(x), atol=1e-5)
    fresh = create_encoder("resnet18", 32)
    assert not torch.allclose(fresh.eval()(x), ours(x), atol=1e-3)  # the weights really came from the file


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssl_derm.cli", "pretrain", "--out", str(out),
           *_tiny(tmp_path, **{"train.max_steps": 500, "train.ckpt_every": 1, "monitor.every_steps": 0})]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.is_file():
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file(), "no checkpoint was written before the kill"
    done = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < done < 500
    # same run, shorter budget: it must continue from the checkpoint, not start again
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"train.max_steps": done + 2,
                                                                   "monitor.every_steps": 0})]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] == done and m["steps"] == done + 2


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "x"), "train.max_stesp=3"]) == 2
    err = capsys.readouterr().err
    assert "train.max_stesp" in err and "Traceback" not in err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "method.name=simclear", "device=cpu",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic_n=48", "data.image_size=32"]) == 2
    assert "simclear" in capsys.readouterr().err  # an unknown method is a config error, found when the config loads


def test_exclude_split_keeps_test_images_out_of_pretraining(tmp_path, monkeypatch):
    from ssl_derm.commands import pretrain as P

    from ssl_derm.config import DataConfig
    from ssl_derm.data import load_dataset

    ds = load_dataset(DataConfig(synthetic_n=48, image_size=32, cache_dir=str(tmp_path / "cache")), progress=False)
    test_ids = ds.ids[:10]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": test_ids, "train": ds.ids[10:]}))
    seen = set()
    real = P.CacheBatches.indices_at

    def spy(self, step):
        rows = real(self, step)
        seen.update(ds.ids[r] for r in rows)
        return rows

    monkeypatch.setattr(P.CacheBatches, "indices_at", spy)
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"train.max_steps": 4, "monitor.every_steps": 0}),
                 f"data.exclude_split={split}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_excluded"] == 10 and m["n_images"] == 38
    assert seen and not seen & set(test_ids)
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path), f"data.exclude_split={tmp_path / 'nope.json'}"]) == 2  # a config error


def test_dino_exports_its_teacher_when_asked(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(ROOT / "ssl_derm/configs/pretrain/dino_resnet18.yaml"), "--out", str(out),
                 *_tiny(tmp_path, "dino", **{"monitor.every_steps": 0, "train.max_steps": 3})]) == 0
    exported = load_file(str(out / "encoder.safetensors"))
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    teacher = {k[len("teacher_encoder.model."):]: v for k, v in state.items() if k.startswith("teacher_encoder.model.")}
    student = {k[len("encoder.model."):]: v for k, v in state.items() if k.startswith("encoder.model.")}
    assert teacher and all(torch.equal(exported[k], teacher[k]) for k in exported)
    assert any(not torch.equal(exported[k], student[k]) for k in exported if exported[k].is_floating_point())
    assert main(["pretrain", "--out", str(tmp_path / "s"), *_tiny(tmp_path), "method.name=simclr",
                 "method.export=teacher"]) == 2  # a config error


def test_pretraining_continues_from_encoder_init(tmp_path):
    """encoder.init=PATH: the run starts from those weights (a vanishing lr and no decay: they come out unchanged)."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(5)
    start = timm.create_model("resnet18", num_classes=3).state_dict()
    save_file({k: v.contiguous() for k, v in start.items()}, str(tmp_path / "start.safetensors"))
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"monitor.every_steps": 0}), "train.lr=1e-12",
                 "train.min_lr=0", "train.weight_decay=0", f"encoder.init={tmp_path / 'start.safetensors'}"]) == 0
    exported = load_file(str(out / "encoder.safetensors"))
    conv = [k for k in exported if k.endswith("conv1.weight")]
    assert conv and all(torch.allclose(exported[k], start[k], atol=1e-6) for k in conv)


def test_finished_run_run_again_keeps_its_results(tmp_path):
    """A rerun of a finished run loads the final checkpoint and recomputes the same metrics (not a NaN
    loss and an empty history); a changed config is refused in one line and --force starts over."""
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), *_tiny(tmp_path, **{"train.max_steps": 3, "monitor.every_steps": 2})]
    assert main(args) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert main(args) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["resumed_from_step"] == 3 and first["resumed_from_step"] == 0
    for key in ("final_loss", "loss_history", "knn_monitor", "steps"):
        assert again[key] == first[key], key
    assert main([*args, "train.lr=0.5"]) == 2  # a config error, refused: the checkpoint was written with another LR
    assert main([*args[:3], "--force", *args[3:], "train.lr=0.5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 0


def test_a_checkpoint_from_before_a_key_existed_resumes_while_the_key_keeps_its_default(tmp_path, capsys):
    """A run written before ssl-derm gained ``method.lesion_*`` resumes; turning the new key on is a change."""
    import yaml

    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"monitor.every_steps": 0})]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["method"]["lesion_weight"], state["config"]["method"]["lesion_stride"]  # an older ssl-derm
    torch.save(state, ckpt)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["method"]["lesion_weight"], saved["method"]["lesion_stride"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"train.max_steps": 3, "monitor.every_steps": 0,
                                                                   "method.lesion_weight": 0.5})]) == 2
    err = capsys.readouterr().err
    assert "method.lesion_weight (None -> 0.5)" in err and "lesion_stride" not in err and "--force" in err
    assert main(["pretrain", "--out", str(out), *_tiny(tmp_path, **{"train.max_steps": 3,
                                                                   "monitor.every_steps": 0})]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] == 2 and m["steps"] == 3


def test_resume_defaults_come_from_each_plugin_sections_own_class():
    from ssl_derm.config import load_config
    from ssl_derm.runs.resume import config_differences, field_defaults
    from ssl_derm.segmenters.config import SegmentConfig

    cfg = load_config(SegmentConfig, None, ["segment.method=contrast_em"])
    d = field_defaults(cfg)
    assert d["segment.em_iters"] == 4  # contrast_em's own default, not the shared class's 3
    new = dataclasses.asdict(cfg)
    old = json.loads(json.dumps(new))
    del old["segment"]["em_iters"]
    assert config_differences(old, new, d) == []
    new["segment"]["em_iters"] = 3
    assert config_differences(old, new, d) == ["segment.em_iters"]
    assert config_differences(old, dataclasses.asdict(cfg)) == ["segment.em_iters"]  # no defaults: a difference
