"""Hostile reruns: a finished run is never overwritten by another config, an output folder never mixes two
runs' files, and two commands never write one folder at once. Each test names its case."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ssl_derm.cli import main

SIZE = 32


@pytest.fixture(scope="module")
def synth(synth_folder):
    """The shared 24-image synthetic folder (conftest), read only: a test that edits it works on a copy."""
    return synth_folder


def _err(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln and "it/s" not in ln]


def _segment(synth, tmp_path, out, *extra):
    return ["segment", "--out", str(out), f"data.images=[{synth / 'images'}]", f"data.masks={synth / 'masks'}",
            f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu", "segment.method=otsu_gray",
            *extra]


def _finetune(synth, tmp_path, out, *extra):
    return ["finetune", "--out", str(out), f"data.images=[{synth / 'images'}]", f"data.labels={synth / 'labels.csv'}",
            f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}", "encoder.name=test_resnet",
            "encoder.checkpoint=none", "device=cpu", *extra]


def test_finished_segment_run_is_not_overwritten_by_another_config(synth, tmp_path, capsys):
    """Case: a finished `segment` run rerun with another config into the same --out is refused, naming the
    key (as finetune and pretrain do); the same config leaves it as it is."""
    out = tmp_path / "seg"
    assert main(_segment(synth, tmp_path, out)) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(_segment(synth, tmp_path, out, "segment.overlay_n=3")) == 2
    err = _err(capsys)
    assert len(err) == 1 and "finished run" in err[0] and "segment.overlay_n" in err[0], err
    assert (out / "metrics.json").read_bytes() == before
    assert main(_segment(synth, tmp_path, out)) == 0 and (out / "metrics.json").read_bytes() == before


@pytest.fixture(scope="module")
def seg_model(synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segmodel")
    assert main(_segment(synth, tmp, tmp / "run")) == 0
    return tmp / "run"


def test_predict_into_a_used_folder_keeps_no_file_of_the_earlier_predict(synth, seg_model, tmp_path, capsys):
    """Case: predict into a folder used before: masks/ kept the first run's masks beside the new ones and an
    old metrics.json stayed beside new predictions. The earlier predict's outputs are cleared (and said so)."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    for k, p in enumerate(sorted((synth / "images").glob("*.jpg"))):
        shutil.copy(p, first if k < 12 else second)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(seg_model), "--images", str(first), "--out", str(out), "device=cpu",
                 f"data.masks={synth / 'masks'}"]) == 0
    assert (out / "metrics.json").is_file()
    capsys.readouterr()
    assert main(["predict", "--model", str(seg_model), "--images", str(second), "--out", str(out), "device=cpu"]) == 0
    assert "cleared the outputs of an earlier predict" in capsys.readouterr().err
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(p.stem for p in second.iterdir())
    assert not (out / "metrics.json").exists()  # the old scores belong to other masks


def test_predict_into_another_commands_folder_is_refused(synth, seg_model, tmp_path, capsys):
    """Sibling: --out of predict pointed at a run folder (its metrics.json, masks/) must not clear that run."""
    before = (seg_model / "metrics.json").read_bytes()
    assert main(["predict", "--model", str(seg_model), "--images", str(synth / "images"), "--out", str(seg_model),
                 "device=cpu"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and "of another command" in err[0], err
    assert (seg_model / "metrics.json").read_bytes() == before


def test_duplicate_image_ids_given_to_predict_are_said_on_the_console(synth, seg_model, tmp_path, capsys):
    """Case: duplicate ids given to predict were skipped and counted only inside predict.json."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    src = sorted((synth / "images").glob("*.jpg"))[:3]
    for p in src:
        shutil.copy(p, a)
    shutil.copy(src[0], b / src[0].name)
    assert main(["predict", "--model", str(seg_model), "--images", str(a), str(b), "--out", str(tmp_path / "p"),
                 "device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "1 image files share an id with an earlier file and are not predicted" in err and src[0].stem in err
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["duplicates_skipped"] == 1


def test_finetune_with_zero_steps_is_refused(synth, tmp_path, capsys):
    """Case: train.max_steps=0 exported and scored an untrained model with exit 0; finetune refuses (exit 2)."""
    out = tmp_path / "ft"
    assert main(_finetune(synth, tmp_path, out, "protocol.name=finetune", "train.max_steps=0")) == 2
    err = _err(capsys)
    assert len(err) == 1 and "train.max_steps" in err[0] and "untrained" in err[0], err
    assert not (out / "model.json").exists()


def test_pretrain_with_zero_steps_says_so(synth, tmp_path, capsys):
    """Case (others): pretrain with train.max_steps=0 may export the initial weights, but not silently."""
    out = tmp_path / "pt"
    assert main(["pretrain", "--out", str(out), f"data.images=[{synth / 'images'}]", f"data.image_size={SIZE}",
                 f"data.cache_dir={tmp_path / 'cache'}", "encoder.name=test_resnet", "device=cpu",
                 "train.max_steps=0", "train.batch_size=8"]) == 0
    err = capsys.readouterr().err
    assert "train.max_steps=0" in err and "keeps its initial weights" in err


HOLD = ("import sys, time; from ssl_derm.runs.lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1], 'holder'):\n"
        "    print('held', flush=True); time.sleep(60)\n")


def _holder(out):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("command", ["finetune", "segment", "predict"])
def test_a_folder_in_use_is_refused_naming_its_holder(synth, seg_model, tmp_path, capsys, command):
    """Case: two identical commands into one --out at once (one died on the other's last.pt.tmp). The second
    stops at once, naming the process that holds the folder; nothing of it is written there."""
    out = tmp_path / "busy"
    holder = _holder(out)
    try:
        args = {"finetune": _finetune(synth, tmp_path, out, "protocol.name=finetune", "train.max_steps=2"),
                "segment": _segment(synth, tmp_path, out),
                "predict": ["predict", "--model", str(seg_model), "--images", str(synth / "images"), "--out", str(out),
                            "device=cpu"]}[command]
        assert main(args) == 1
        err = _err(capsys)
        assert len(err) == 1 and f"is in use: held by pid {holder.pid}" in err[0] and "holder" in err[0], err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_lock_behind(synth, tmp_path):
    """The lock dies with its process (SIGKILL included): the next run goes ahead."""
    out = tmp_path / "seg"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert main(_segment(synth, tmp_path, out)) == 0
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("field, value", [("threshold", 2.0), ("image_size", 0), ("std", [1.0, 1.0, 0.0]),
                                          ("segmenter", "magic")])
def test_segmenter_model_json_values_are_validated(synth, seg_model, tmp_path, capsys, field, value):
    """Sibling of the classifier's model.json checks, on a segmenter export."""
    run = tmp_path / "m"
    shutil.copytree(seg_model, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, field: value}))
    assert main(["predict", "--model", str(run), "--images", str(synth / "images"), "--out", str(tmp_path / "p"),
                 "device=cpu"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and f"'{field}'" in err[0], err


def test_force_with_a_bad_override_keeps_the_checkpoints(synth, tmp_path, capsys):
    """Sibling (lost work): `--force` deleted <out>/checkpoints before the config was read, so a typo in an
    override lost the checkpoints and then failed. The config is read first now."""
    out = tmp_path / "ft"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"state")
    assert main(["finetune", "--force"] + _finetune(synth, tmp_path, out, "train.no_such_key=1")[1:]) == 2
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"state"
