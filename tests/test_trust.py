"""The trust contract: external test sets, intervals, fingerprints, and runs that never end with exit 0 and a lie."""
import json
from pathlib import Path

import pytest
import yaml

from ssl_derm.cli import main
from ssl_derm.data import write_synthetic


def _external(tmp_path, n=40, seed=5, prefix="x"):
    """A synthetic set whose ids do not clash with the built-in one (another archive)."""
    root = tmp_path / "ext"
    write_synthetic(root, n=n, size=48, seed=seed, quiet=True)
    for f in (root / "images").iterdir():
        f.rename(f.with_name(prefix + f.name))
    for f in (root / "masks").iterdir():
        f.rename(f.with_name(prefix + f.name))
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0]] + [prefix + ln for ln in lines[1:]]) + "\n")
    return root


def _common(tmp_path, n=80):
    return ["data.images=[synthetic]", f"data.synthetic_n={n}", "data.image_size=32",
            f"data.cache_dir={tmp_path / 'cache'}", "device=cpu"]


def _encoder(tmp_path, name="resnet18", seed=0, size=32):
    import torch

    from ssl_derm.encoders import create_encoder, export_encoder

    torch.manual_seed(seed)
    return str(export_encoder(create_encoder(name, size), tmp_path / f"enc_{name}_{seed}.safetensors"))


def _ft(tmp_path, out, *overrides, config="knn"):
    """argv of a small finetune: --out first, then the shared overrides and ``overrides``."""
    return ["finetune", "--config", f"configs/finetune/{config}.yaml", "--out", str(out), *_common(tmp_path),
            "split.fraction=1.0", *overrides]


def _err(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_linear_scores_an_external_set_with_intervals(tmp_path, capsys):
    ext = _external(tmp_path)
    out = tmp_path / "R"
    rc = main(["finetune", "--config", "configs/finetune/linear.yaml", "--out", str(out), *_common(tmp_path),
               f"data.test_images=[{ext / 'images'}]", f"data.test_labels={ext / 'labels.csv'}", "split.fraction=1.0"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["external"]["balanced_accuracy"] <= 1 and m["external"]["n"] == 40
    tone = m["external"]["skin_tone"]  # the external rows' own skin tone, behind the pool's
    assert tone["n_unknown"] + sum(g["n"] for g in tone["groups"].values()) == 40 and 0 <= m["external"]["ece"] <= 1
    assert (out / "external_calibration.png").is_file()
    lo, hi = m["external"]["balanced_accuracy_ci"]
    assert lo <= m["external"]["balanced_accuracy"] <= hi
    assert m["balanced_accuracy_ci"][0] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci"][1]
    assert len(m["fingerprint"]["sha256"]) == 64 and m["encoder_sha256"] is None
    # the same command again: left as it is; another seed: stops naming the key; --force reruns
    assert main(["finetune", "--config", "configs/finetune/linear.yaml", "--out", str(out), *_common(tmp_path),
                 f"data.test_images=[{ext / 'images'}]", f"data.test_labels={ext / 'labels.csv'}", "split.fraction=1.0"]) == 0
    assert "already holds this run" in capsys.readouterr().err
    args = _ft(tmp_path, out)
    assert main(args) != 0
    assert "protocol.name" in _err(capsys)
    assert main(["finetune", "--force"] + args[1:]) == 0
    assert len(list((out / "tb").iterdir())) == 1 and not (out / "external_probs.npy").exists()


def test_label_map_maps_drops_and_names_unmapped_labels(tmp_path, capsys):
    ext = _external(tmp_path)
    csv = (ext / "labels.csv").read_text().replace(",melanoma,", ",MEL,").replace(",nevus,", ",naevus,")
    (ext / "labels.csv").write_text(csv)
    base = [*_common(tmp_path), "split.fraction=1.0",
            f"data.test_images=[{ext / 'images'}]", f"data.test_labels={ext / 'labels.csv'}"]
    knn = ["finetune", "--config", "configs/finetune/knn.yaml", "--out"]
    assert main(knn + [str(tmp_path / "a")] + base) != 0
    assert "MEL" in _err(capsys)
    assert main(knn + [str(tmp_path / "b")] + base + ["data.label_map={MEL: melanoma, naevus: null}"]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    n_naevus = csv.count(",naevus,")
    assert m["external"]["n"] == 40 - n_naevus and m["external"]["classes"] == m["classes"]


def test_given_split_takes_the_split_column(tmp_path):
    from ssl_derm.data import load_dataset
    from ssl_derm.data.given_split import given_split
    from ssl_derm.config import DataConfig

    root = _external(tmp_path, n=30, prefix="")
    lines = (root / "labels.csv").read_text().splitlines()
    sides = ["train"] * 20 + ["validation"] * 4 + ["test"] * 6
    (root / "labels.csv").write_text("\n".join([lines[0] + ",split"] + [f"{ln},{s}" for ln, s in zip(lines[1:], sides)]))
    ds = load_dataset(DataConfig(images=[str(root / "images")], labels=str(root / "labels.csv"), image_size=32,
                                 cache_dir=str(tmp_path / "cache")), need_labels=True)
    split = given_split(ds)
    ids = [ln.split(",")[0] for ln in lines[1:]]
    assert sorted(split["test"]) == sorted(ids[24:]) and sorted(split["val"]) == sorted(ids[20:24])
    assert set(split["labelled"]["1.0"]) == set(split["train"])
    ds.given_split[0] = "holdout"
    with pytest.raises(ValueError, match="holdout"):
        given_split(ds)
    out = tmp_path / "g"  # end to end: the test side is the CSV's
    assert main(["finetune", "--config", "configs/finetune/knn.yaml", "--out", str(out), "device=cpu",
                 f"data.images=[{root / 'images'}]", f"data.labels={root / 'labels.csv'}", "data.image_size=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "split.mode=given", "split.fraction=1.0"]) == 0
    assert sorted(json.loads((out / "test_ids.json").read_text())) == sorted(ids[24:])


def test_label_efficiency_rerun_with_another_checkpoint_reruns_pretrained_cells(tmp_path, capsys):
    from ssl_derm.encoder_files import weights_sha256  # the encoder part of a fingerprint

    a, b = _encoder(tmp_path, seed=0), _encoder(tmp_path, seed=1)
    args = ["label-efficiency", "--config", "configs/finetune/knn.yaml", "--out", str(tmp_path / "le"),
            "--fractions", "1.0", "--protocols", "knn", *_common(tmp_path)]
    assert main(args + ["--checkpoint", a]) == 0
    assert main(args + ["--checkpoint", b]) == 0
    cell = tmp_path / "le" / "cells" / "init-pretrained_name-knn_fraction-1.0_seed-0"
    assert json.loads((cell / "metrics.json").read_text())["encoder_sha256"] == weights_sha256(b)
    assert json.loads((cell.with_name(cell.name + ".stale-1") / "metrics.json").read_text())["encoder_sha256"] == weights_sha256(a)
    rnd = tmp_path / "le" / "cells" / "init-random_name-knn_fraction-1.0_seed-0"
    assert not rnd.with_name(rnd.name + ".stale-1").exists()  # the random cell still fits: reused
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert "bootstrap" in md and "[" in md


def test_sweep_rerun_after_editing_common_reruns_its_cells(tmp_path):
    from ssl_derm.commands.sweep import run_sweep

    spec = {"seeds": [0], "downstream": "finetune", "metrics": ["balanced_accuracy"],
            "common": {"data.images": ["synthetic"], "data.synthetic_n": 64, "data.image_size": 32,
                       "data.cache_dir": str(tmp_path / "cache"), "device": "cpu", "protocol.knn_temperature": 0.07},
            "finetune": {"set": {"protocol.name": "knn", "split.fraction": 1.0}},
            "grid": {"init": ["random"]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = run_sweep(path, out=tmp_path / "sw")
    spec["common"]["protocol.knn_temperature"] = 0.5
    path.write_text(yaml.safe_dump(spec))
    run_sweep(path, out=tmp_path / "sw")
    cell = next(p for p in (root / "cells").iterdir() if ".stale-" not in p.name)
    assert yaml.safe_load((cell / "config.yaml").read_text())["protocol"]["knn_temperature"] == 0.5
    assert cell.with_name(cell.name + ".stale-1").is_dir()
    assert "balanced_accuracy_ci" in (root / "results.csv").read_text()


def test_wrong_architecture_and_single_class_exit_nonzero_with_one_line(tmp_path, capsys):
    enc = _encoder(tmp_path)
    assert main(_ft(tmp_path, tmp_path / "a", "encoder.name=vit_tiny_patch16_224", f"encoder.checkpoint={enc}")) != 0
    line = _err(capsys)
    assert enc in line and "resnet18" in line and "vit_tiny_patch16_224" in line and "contradicts" in line
    root = _external(tmp_path, n=20)
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0]] + [",".join([ln.split(",")[0], "nevus"]) for ln in lines[1:]]))
    assert main(["finetune", "--config", "configs/finetune/knn.yaml", "--out", str(tmp_path / "b"), "device=cpu",
                 f"data.images=[{root / 'images'}]", f"data.labels={root / 'labels.csv'}", "data.image_size=32",
                 f"data.cache_dir={tmp_path / 'cache'}"]) != 0
    assert "at least two" in _err(capsys)


def test_segment_rejects_encoder_keys_without_an_encoder(tmp_path, capsys):
    enc = _encoder(tmp_path)
    assert main(["segment", "--out", str(tmp_path / "s"), *_common(tmp_path, 8), "segment.method=otsu_gray",
                 f"encoder.checkpoint={enc}"]) != 0
    assert "encoder.checkpoint" in _err(capsys)


def test_messages_name_the_file_or_key(tmp_path, capsys):
    enc = Path(_encoder(tmp_path))
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(enc.read_bytes()[: enc.stat().st_size // 2])
    assert main(_ft(tmp_path, tmp_path / "a", f"encoder.checkpoint={bad}")) != 0
    assert str(bad) in _err(capsys)
    assert main(_ft(tmp_path, tmp_path / "b", "train.lr=0")) != 0
    assert "train.lr" in _err(capsys)
    assert main(["finetune", "--config", "configs/finetune/knn.yaml", "--out", str(tmp_path / "c"), "device=cpu",
                 "data.images=[synthetic]", "data.synthetic_n=40", "data.image_size=16",
                 f"data.cache_dir={tmp_path / 'cache'}"]) != 0
    assert "data.image_size" in _err(capsys)
    (tmp_path / "file").write_text("x")
    assert main(_ft(tmp_path, tmp_path / "file")) != 0
    assert "is an existing file" in _err(capsys)


def test_masks_for_a_classifier_warn(tmp_path, capsys):
    from ssl_derm.commands.checks import finetune_ignored_data_keys
    from ssl_derm.evaluate.config import FinetuneConfig

    cfg = FinetuneConfig()
    cfg.data.images, cfg.data.masks = ["some/folder"], "some/masks"
    finetune_ignored_data_keys(cfg, seg=False)
    assert "data.masks is ignored" in capsys.readouterr().err


def test_stale_cache_temp_folders_are_removed(tmp_path):
    import subprocess
    import sys

    from ssl_derm.data.cache import remove_stale_tmp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".images-abc.tmp-{dead.stdout.strip()}-1a2b3c"
    live = tmp_path / f".images-def.tmp-{__import__('os').getpid()}-1a2b3c"
    gone.mkdir(), live.mkdir()
    remove_stale_tmp(tmp_path)
    assert not gone.exists() and live.exists()


def test_fingerprint_ignores_logging_and_diff_names_keys():
    from ssl_derm.evaluate.config import FinetuneConfig
    from ssl_derm.runs.fingerprint import config_diff, config_sha256
    from ssl_derm.config import to_dict

    a, b = FinetuneConfig(), FinetuneConfig()
    b.train.log_every, b.train.num_threads = 1, 1
    assert config_sha256(a) == config_sha256(b)
    b.train.lr = 0.5
    assert config_sha256(a) != config_sha256(b)
    assert config_diff(to_dict(a), to_dict(b)) == ["train.lr: 0.001 -> 0.5"]


def test_fewmask_seg_scores_external_masks(tmp_path):
    ext = _external(tmp_path, n=12)
    out = tmp_path / "seg"
    assert main(["finetune", "--config", "configs/finetune/fewmask_seg.yaml", "--out", str(out), *_common(tmp_path, 40),
                 "split.fraction=1.0", "train.max_steps=2", "train.batch_size=4", "protocol.eval_every=2",
                 f"data.test_images=[{ext / 'images'}]", f"data.test_masks={ext / 'masks'}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["external"]["n"] == 12 and 0 <= m["external"]["dice"] <= 1
    lo, hi = m["external"]["dice_ci"]
    assert lo <= m["external"]["dice"] <= hi and m["dice_ci"][0] <= m["dice"] <= m["dice_ci"][1]
