"""Hostile input: bad data, model files and configs end in one clear line (exit 1 or 2) naming what to fix,
or in a correct result, never in a silent wrong result, an internal error or a hang. Each test names its case."""
import csv
import errno
import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from ssl_derm.cli import main
from ssl_derm.config import DataConfig
from ssl_derm.data import load_dataset, make_split, write_synthetic
from ssl_derm.errors import DataError, DiskFullError

SIZE = 32


@pytest.fixture(scope="module")
def synth(synth_folder):
    """The shared 24-image synthetic folder (conftest), read only: a test that edits it works on a copy."""
    return synth_folder


def _copy(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "d")
    return tmp_path / "d"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _data(folder, tmp_path, **kw):
    return DataConfig(images=[str(folder / "images")], labels=str(folder / "labels.csv"), image_size=SIZE,
                      cache_dir=str(tmp_path / "cache"), **kw)


def _err(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]


# ------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("blank", ["", "NaN", "nan", " "])
def test_empty_or_nan_lesion_ids_are_one_group_each_not_one_lesion(synth, tmp_path, capsys, blank):
    """Case: lesion_id empty/NaN for 12 of 24 images. Each is its own group (as an image without a row),
    with a warning naming them; before, all 12 were one lesion and landed on one side together."""
    d = _copy(synth, tmp_path)
    rows = _rows(d / "labels.csv")
    for r in rows[:12]:
        r["lesion_id"] = blank
    _write_rows(d / "labels.csv", rows)
    ds = load_dataset(_data(d, tmp_path), need_labels=True, progress=False)
    err = capsys.readouterr().err
    assert "12 images have an empty or NaN lesion_id" in err and rows[0]["image_id"] in err
    blank_ids = {r["image_id"] for r in rows[:12]}
    assert all(g == i for g, i in zip(ds.lesion_ids, ds.ids) if i in blank_ids)
    split = make_split(ds.ids, ds.labels, ds.lesion_ids, test_frac=0.25, val_frac=0.0, seed=0)
    sides = [len(blank_ids & set(split[s])) for s in ("train", "test")]
    assert min(sides) > 0, sides  # one group of 12 would sit on one side whole


def test_make_split_gives_missing_lesion_ids_their_own_group():
    """Case (API): lesion ids None/NaN/'' passed to make_split directly are not one shared group."""
    ids = [f"i{k}" for k in range(20)]
    lesions = [None, float("nan"), ""] * 6 + ["a", "a"]
    split = make_split(ids, [k % 2 for k in range(20)], lesions, test_frac=0.3, val_frac=0.0, seed=0)
    missing = set(ids[:18])
    assert 0 < len(missing & set(split["test"])) < 18


def test_image_replaced_in_place_with_same_size_and_mtime_is_decoded_again(tmp_path):
    """Case: an image replaced by another of the same byte size and mtime (two BMPs of one shape): the cache
    key reads the files' first and last blocks, so the new pixels are decoded and the data key changes."""
    rng = np.random.default_rng(0)
    (tmp_path / "im").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "im" / f"i{k}.bmp")
    cfg = DataConfig(images=[str(tmp_path / "im")], image_size=SIZE, cache_dir=str(tmp_path / "cache"))
    before = load_dataset(cfg, progress=False)
    a = tmp_path / "im" / "i0.bmp"
    st = a.stat()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_dataset(cfg, progress=False)
    assert after.key != before.key
    assert not np.array_equal(after.images[0], before.images[0])
    assert np.array_equal(after.images[1], before.images[1])


def test_symlink_loops_are_walked_once(synth, tmp_path):
    """Case: `data check` on a tree with two symlinks to its parent (was exponential: killed after 120 s).
    Each real folder is followed once, by device and inode; every image is found once."""
    d = _copy(synth, tmp_path)
    sub = d / "images" / "deeper"
    sub.mkdir()
    shutil.move(str(sorted((d / "images").glob("*.jpg"))[0]), sub)
    for name in ("up1", "up2", "up3"):
        os.symlink("..", sub / name)
    t = time.perf_counter()
    assert main(["data", "check", str(d / "images")]) == 0
    assert time.perf_counter() - t < 30
    from ssl_derm.data.sources import list_images

    found = list_images([str(d / "images")])
    assert len(found) == 24 and not found.duplicates


def test_external_image_identical_to_a_training_image_is_refused(synth, tmp_path):
    """Case: an external test image byte-identical to a training image under another id was scored as
    external; now a DataError names both ids."""
    from ssl_derm.evaluate.config import FinetuneConfig
    from ssl_derm.evaluate.external import load_external

    d = _copy(synth, tmp_path)
    ext = tmp_path / "ext"
    (ext / "images").mkdir(parents=True)
    src = sorted((d / "images").glob("*.jpg"))
    shutil.copy(src[0], ext / "images" / "copy_of_first.jpg")
    shutil.copy(src[1], ext / "images" / "other.jpg")
    (d / "images" / src[1].name).unlink()  # 'other' is not in the pool
    _write_rows(ext / "labels.csv", [{"image_id": "copy_of_first", "label": "nevus"},
                                     {"image_id": "other", "label": "nevus"}])
    cfg = FinetuneConfig(data=_data(d, tmp_path, test_images=[str(ext / "images")],
                                    test_labels=str(ext / "labels.csv")))
    pool = load_dataset(cfg.data, need_labels=True, progress=False)
    with pytest.raises(DataError, match=f"identical.*{src[0].stem} = copy_of_first"):
        load_external(cfg, pool)


def test_external_image_of_a_training_lesion_is_said(synth, tmp_path, capsys):
    """Case: an external image of a lesion id that the training pool holds: a warning naming the lesion
    (not a refusal: two archives may number their lesions alike without sharing one)."""
    from ssl_derm.evaluate.config import FinetuneConfig
    from ssl_derm.evaluate.external import load_external

    d = _copy(synth, tmp_path)
    rows = _rows(d / "labels.csv")
    ext = tmp_path / "ext"
    (ext / "images").mkdir(parents=True)
    shutil.move(str(d / "images" / f"{rows[0]['image_id']}.jpg"), ext / "images" / "x.jpg")
    _write_rows(ext / "labels.csv", [{"image_id": "x", "label": rows[0]["label"], "lesion_id": rows[1]["lesion_id"]}])
    cfg = FinetuneConfig(data=_data(d, tmp_path, test_images=[str(ext / "images")],
                                    test_labels=str(ext / "labels.csv")))
    pool = load_dataset(cfg.data, need_labels=True, progress=False)
    capsys.readouterr()
    assert load_external(cfg, pool).ids == ["x"]
    err = capsys.readouterr().err
    assert "1 lesion ids of data.test_labels are also lesion ids in data.labels" in err and rows[1]["lesion_id"] in err


def test_given_split_with_a_lesion_on_train_and_test_warns(synth, tmp_path, capsys):
    """Case: split.mode=given whose split column puts one lesion on train and test, and a copy of a
    training image on test under another id: used as given, with a warning naming both."""
    from ssl_derm.data.given_split import given_split

    d = _copy(synth, tmp_path)
    rows = _rows(d / "labels.csv")
    for k, r in enumerate(rows):
        r["split"] = "test" if k < 6 else "train"
        r["lesion_id"] = f"L{k}"
    rows[0]["lesion_id"] = rows[10]["lesion_id"] = "shared_lesion"
    shutil.copy(d / "images" / f"{rows[11]['image_id']}.jpg", d / "images" / "copy_on_test.jpg")
    rows.append({**rows[11], "image_id": "copy_on_test", "split": "test", "lesion_id": "L99"})
    _write_rows(d / "labels.csv", rows)
    ds = load_dataset(_data(d, tmp_path), need_labels=True, progress=False)
    capsys.readouterr()
    split = given_split(ds)
    err = capsys.readouterr().err
    assert "copy_on_test" in split["test"]
    assert "shared_lesion" in err and "test side and on the training side" in err
    assert f"{rows[11]['image_id']} = copy_on_test" in err


def test_cache_on_a_full_disk_is_one_message_and_no_partial_entry(synth, tmp_path, monkeypatch, capsys):
    """Case: disk full while the cache is built (was a SIGBUS with no message): free space is asked before
    the memory map is sized; the message names the cache folder and the space needed."""
    import ssl_derm.errors as errors

    d = _copy(synth, tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    args = ["segment", "--out", str(tmp_path / "run"), f"data.images=[{d / 'images'}]", f"data.image_size={SIZE}",
            f"data.cache_dir={tmp_path / 'cache'}", "device=cpu"]
    assert main(args) == 1
    err = _err(capsys)
    assert len(err) == 1 and str(tmp_path / "cache") in err[0] and "MiB needed" in err[0], err
    assert "SSL_DERM_DEBUG" not in err[0]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(("images-", ".images-"))]


def test_cache_fallocate_enospc_is_one_message(synth, tmp_path, monkeypatch):
    """Case: the free-space figure passes but reserving the blocks fails (another writer filled the disk)."""
    import ssl_derm.data.cache as cache

    def full(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full, raising=False)
    d = _copy(synth, tmp_path)
    with pytest.raises(DiskFullError, match=f"no space left on the disk of '{tmp_path / 'cache'}'"):
        load_dataset(_data(d, tmp_path), progress=False)
    assert not [p for p in (tmp_path / "cache").iterdir() if "images" in p.name]


@pytest.mark.parametrize("what", ["json", "safetensors", "checkpoint", "predictions"])
def test_writes_on_a_full_disk_leave_no_partial_file(tmp_path, monkeypatch, what):
    """Case: ENOSPC while writing the model, metrics, a checkpoint or the predictions: one DiskFullError
    naming the folder, and neither the temp file nor a half file stays behind."""
    import torch

    def fill_then_fail(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    target = tmp_path / "out"
    target.mkdir()
    if what == "json":
        from ssl_derm.runs import write_json

        monkeypatch.setattr("pathlib.Path.write_text", lambda self, *a, **k: fill_then_fail(self))
        call = lambda: write_json(target / "metrics.json", {"a": 1})  # noqa: E731
    elif what == "safetensors":
        from ssl_derm.serve import export

        monkeypatch.setattr(export, "save_safetensors", lambda t, path, m: fill_then_fail(path))
        call = lambda: export.save_model(target, {"w": torch.zeros(2)}, {"kind": "classifier"})  # noqa: E731
    elif what == "checkpoint":
        from ssl_derm.engine import checkpoint

        monkeypatch.setattr(checkpoint.torch, "save", lambda state, path: fill_then_fail(path))
        call = lambda: checkpoint.save_checkpoint(target / "last.pt", {"step": 1})  # noqa: E731
    else:
        from types import SimpleNamespace

        from ssl_derm.serve.write import classify_all

        model = SimpleNamespace(classes=["a", "b"], predict_batch=lambda x, tta: torch.full((len(x), 2), 0.5))
        cfg = SimpleNamespace(tta="none", data=SimpleNamespace(labels=None))

        def batches():
            yield ["i1"], np.zeros((1, 4, 4, 3), np.uint8), [(4, 4)]
            raise OSError(errno.ENOSPC, "No space left on device", str(target / "predictions.csv.tmp"))

        call = lambda: classify_all(model, batches(), target, cfg)  # noqa: E731
    with pytest.raises(DiskFullError, match=f"'{target}'"):
        call()
    assert list(target.iterdir()) == []


# ------------------------------------------------------------------------------------- model files
@pytest.fixture()
def model_dir(tmp_path):
    """A linear-probe classifier export of a tiny timm encoder: 4 classes."""
    import timm
    import torch

    from ssl_derm.serve.export import save_model

    run = tmp_path / "model"
    run.mkdir()
    enc = timm.create_model("test_resnet", num_classes=0)
    tensors = {**enc.state_dict(), "probe.weight": torch.randn(4, enc.num_features), "probe.bias": torch.zeros(4)}
    save_model(run, tensors, {"kind": "classifier", "timm_name": "test_resnet", "image_size": SIZE,
                              "mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b", "c", "d"],
                              "num_classes": 4, "head": "linear", "timm_create_kwargs": {}, "protocol": "linear"})
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(tmp_path / "imgs" / f"i{k}.png")
    return run


def _edit_meta(run, **changes):
    meta = json.loads((run / "model.json").read_text())
    meta.update(changes)
    (run / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("field, value", [
    ("image_size", 0), ("image_size", -32), ("image_size", "32"), ("std", [0.25, 0.0, 0.25]), ("std", [0.25, 0.25]),
    ("mean", [0.5, 0.5]), ("mean", [0.5, "x", 0.5]), ("mean", [0.5, float("nan"), 0.5]),
    ("classes", ["a", "b"]), ("classes", ["a", "a", "b", "c"]), ("num_classes", 7), ("timm_name", "no_such_net_v9"),
    ("timm_name", 3)])
def test_model_json_values_are_validated_on_load(model_dir, tmp_path, capsys, field, value):
    """Cases: model.json with image_size 0/negative (was: exit 0, every image 'bad'), std 0 (was: NaN
    probabilities), mean of 2 values, classes shorter than the head, an unknown timm name (were internal
    errors): one line, exit 1, naming the field."""
    if field == "classes":
        _edit_meta(model_dir, classes=value, num_classes=len(value))
    else:
        _edit_meta(model_dir, **{field: value})
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_dir), "--images", str(tmp_path / "imgs"), "--out", str(out),
                 "device=cpu"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and f"'{field}'" in err[0] and "SSL_DERM_DEBUG" not in err[0], err
    assert not (out / "predictions.csv").exists()


def test_valid_model_json_predicts(model_dir, tmp_path):
    """The control of the cases above: the untouched export predicts every image."""
    from ssl_derm.commands.predict import read_predictions

    assert main(["predict", "--model", str(model_dir), "--images", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "pred"), "device=cpu"]) == 0
    assert len(read_predictions(tmp_path / "pred" / "predictions.csv")) == 3


def test_encoder_file_is_byte_stable_across_processes(tmp_path):
    """Case: encoder.safetensors rewritten with identical tensors got a new sha256 (metadata in hash-map
    order), so an unchanged finetune on it was refused as stale. The bytes are now the same in every process,
    and the fingerprint hashes the tensors, not the metadata."""
    import subprocess
    import sys

    code = ("import sys, timm; from ssl_derm.encoders import Encoder, export_encoder; import torch; "
            "torch.manual_seed(0); m = timm.create_model('test_resnet', num_classes=0); "
            "export_encoder(Encoder(m, 'test_resnet', 32), sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONHASHSEED": "random"}
    files = [tmp_path / f"e{k}.safetensors" for k in range(4)]
    for f in files:
        subprocess.run([sys.executable, "-c", code, str(f)], check=True, env=env)
    assert len({f.read_bytes() for f in files}) == 1

    from safetensors.torch import load_file, save_file

    from ssl_derm.encoder_files import weights_sha256

    other = tmp_path / "other_meta.safetensors"
    save_file(load_file(str(files[0])), str(other), metadata={"timm_name": "test_resnet", "note": "x"})
    assert weights_sha256(other) == weights_sha256(files[0])  # same tensors, other metadata: same weights hash
    changed = load_file(str(files[0]))
    next(iter(changed.values())).add_(1)
    save_file(changed, str(other))
    assert weights_sha256(other) != weights_sha256(files[0])


# ------------------------------------------------------------------------------------------ config / CLI
def _ft(synth, tmp_path, *extra):
    return ["finetune", "--out", str(tmp_path / "run"), f"data.images=[{synth / 'images'}]",
            f"data.labels={synth / 'labels.csv'}", f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}",
            "encoder.name=test_resnet", "encoder.checkpoint=none", "device=cpu", *extra]


@pytest.mark.parametrize("override, key", [
    ("train.lr=.nan", "train.lr"), ("train.lr=.inf", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.weight_decay=.nan", "train.weight_decay"), ("train.min_lr=.inf", "train.min_lr"),
    ("data.test_frac=-0.1", "data.test_frac"), ("data.val_frac=1.5", "data.val_frac")])
def test_non_finite_or_out_of_range_numbers_name_their_key_exit_2(synth, tmp_path, capsys, override, key):
    """Cases: train.lr=nan blamed the optimizer ('adamw is not usable'), train.lr=inf ended in sklearn's
    'Input contains NaN' (internal error), a negative data.test_frac exited 1: now one line, exit 2, the key."""
    assert main(_ft(synth, tmp_path, "protocol.name=finetune", "train.max_steps=2", override)) == 2
    err = _err(capsys)
    assert len(err) == 1 and f"'{key}'" in err[0] and "SSL_DERM_DEBUG" not in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_config_is_named_as_a_folder(synth, tmp_path, capsys):
    """Case: --config DIR was reported as 'does not exist'."""
    assert main(_ft(synth, tmp_path, "--config", str(tmp_path))) == 2
    err = _err(capsys)
    assert len(err) == 1 and "is a folder; give a YAML file" in err[0], err


def test_given_split_without_test_rows_does_not_advise_test_frac(synth, tmp_path, capsys):
    """Case: 'raise data.test_frac' was the advice under split.mode=given, where the fraction does not apply;
    and the refusal now comes before training."""
    d = _copy(synth, tmp_path)
    rows = _rows(d / "labels.csv")
    for k, r in enumerate(rows):
        r["split"], r["lesion_id"] = ("val" if k < 4 else "train"), f"L{k}"
    _write_rows(d / "labels.csv", rows)
    assert main(_ft(d, tmp_path, "split.mode=given", "protocol.name=linear")) == 1
    err = _err(capsys)
    assert len(err) == 1 and "split=test" in err[0] and "test_frac" not in err[0], err
    assert not (tmp_path / "run" / "model.json").exists()


@pytest.mark.parametrize("option, value", [("--fractions", "abc"), ("--fractions", "0.1,2"), ("--fractions", "nan"),
                                           ("--seeds", "x"), ("--seeds", "1.5")])
def test_label_efficiency_lists_are_usage_errors(tmp_path, capsys, option, value):
    """Case: `label-efficiency --fractions abc` was an internal error (could not convert string to float)."""
    with pytest.raises(SystemExit) as e:
        main(["label-efficiency", "--out", str(tmp_path / "le"), "--checkpoint", "x", option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "comma-separated list" in err and "Traceback" not in err


def test_missing_encoder_checkpoint_is_named(synth, tmp_path, capsys):
    """Case: an encoder.checkpoint that does not exist was a bare FileNotFoundError."""
    missing = tmp_path / "nope.safetensors"
    assert main(_ft(synth, tmp_path, f"encoder.checkpoint={missing}")) == 1
    err = _err(capsys)
    assert len(err) == 1 and f"encoder.checkpoint '{missing}' does not exist" in err[0], err


@pytest.mark.parametrize("command", ["finetune", "segment", "pretrain", "predict"])
def test_out_that_cannot_be_created_is_named_before_any_work(synth, tmp_path, capsys, command, model_dir):
    """Case: `--out /proc/x` (cannot be created) was a bare FileNotFoundError at the end of the run."""
    data = [f"data.images=[{synth / 'images'}]", f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}",
            "device=cpu"]
    if command == "predict":
        args = ["predict", "--model", str(model_dir), "--images", str(tmp_path / "imgs"), "--out", "/proc/x/y",
                "device=cpu"]
    else:
        args = [command, "--out", "/proc/x/y", *data] + (["encoder.name=test_resnet", f"data.labels={synth / 'labels.csv'}"]
                                                          if command == "finetune" else [])
    assert main(args) == 1
    err = _err(capsys)
    assert len(err) == 1 and "--out '/proc/x/y' cannot be created" in err[0] and "SSL_DERM_DEBUG" not in err[0], err


def test_predict_out_that_is_a_file_is_refused(model_dir, tmp_path, capsys):
    """Case: `predict --out FILE` was an internal error (FileExistsError)."""
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(["predict", "--model", str(model_dir), "--images", str(tmp_path / "imgs"), "--out", str(target),
                 "device=cpu"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "is an existing file, not a folder" in err[0], err
    assert target.read_text() == "keep me"


def test_self_training_on_a_single_image_runs(tmp_path):
    """Case: self-training with one image (BatchNorm with one value per channel) was an internal error; the
    batch now holds the image twice, augmented apart, and the run writes its mask."""
    write_synthetic(tmp_path / "one", n=1, size=SIZE, seed=0, quiet=True)
    args = ["segment", "--out", str(tmp_path / "run"), f"data.images=[{tmp_path / 'one' / 'images'}]",
            f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu",
            "selftrain.rounds=1", "encoder.name=test_resnet", "train.max_steps=2", "train.batch_size=4",
            "selftrain.image_size=32"]
    assert main(args) == 0
    assert len(list((tmp_path / "run" / "masks").glob("*.png"))) == 1


# ------------------------------------------------------------------------------------------ siblings
def test_nan_label_and_split_cells_are_empty(synth, tmp_path):
    """Sibling of the NaN lesion id: a label cell 'nan' is no label (not a class named 'nan'), and a split
    cell 'NaN' is an empty split cell."""
    from ssl_derm.data.sources import read_labels

    d = _copy(synth, tmp_path)
    rows = _rows(d / "labels.csv")
    rows[0]["label"] = "nan"
    for r in rows:
        r["split"] = "train"
    rows[1]["split"] = "NaN"
    _write_rows(d / "labels.csv", rows)
    table = read_labels(str(d / "labels.csv"))
    assert "nan" not in table.classes() and table.label[rows[0]["image_id"]] == ""
    assert rows[1]["image_id"] not in table.split


def test_finetune_with_a_batch_of_one_names_the_key(synth, tmp_path, capsys):
    """Sibling of the single self-training image: train.batch_size=1 on a BatchNorm encoder was an internal
    error (Expected more than 1 value per channel)."""
    assert main(_ft(synth, tmp_path, "protocol.name=finetune", "train.batch_size=1", "train.max_steps=2")) == 1
    err = _err(capsys)
    assert len(err) == 1 and "train.batch_size >= 2" in err[0] and "SSL_DERM_DEBUG" not in err[0], err


@pytest.mark.parametrize("command", ["sweep", "label-efficiency"])
def test_out_of_sweep_and_label_efficiency_that_cannot_be_created(tmp_path, capsys, command):
    """Sibling of `--out /proc/x` on the table commands."""
    args = {"sweep": ["sweep", "configs/sweeps/finetune_gap_ham10000.yaml", "--out", "/proc/x/y"],
            "label-efficiency": ["label-efficiency", "--out", "/proc/x/y", "--checkpoint", "x"]}[command]
    assert main(args) == 1
    err = _err(capsys)
    assert len(err) == 1 and "--out '/proc/x/y' cannot be created" in err[0], err


def test_lesion_mask_cache_on_a_full_disk_is_one_message(synth, tmp_path, monkeypatch):
    """Sibling of the image cache: the annotation-free lesion-mask cache (a memory map too) asks for its
    space first instead of dying of SIGBUS."""
    import ssl_derm.errors as errors
    from ssl_derm.segmenters.archive_masks import masks_for

    ds = load_dataset(_data(synth, tmp_path), progress=False)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="lesion-mask cache.*MiB needed"):
        masks_for(ds)


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left on the disk of"), (errno.EACCES, "Permission denied")])
def test_an_os_error_the_user_fixes_is_one_line_anywhere(tmp_path, monkeypatch, capsys, err, words):
    """The one handler at the CLI: a full disk or a permission error raised by any writer not wrapped
    itself is one line naming the file (exit 1), not '[OSError; set SSL_DERM_DEBUG=1]'."""
    import ssl_derm.data

    target = tmp_path / "s" / "labels.csv"

    def failing(*a, **k):
        raise OSError(err, os.strerror(err), str(target))

    monkeypatch.setattr(ssl_derm.data, "write_synthetic", failing)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "4"]) == 1
    lines = _err(capsys)
    assert len(lines) == 1 and words in lines[0] and "labels.csv" in lines[0] and "SSL_DERM_DEBUG" not in lines[0], lines
