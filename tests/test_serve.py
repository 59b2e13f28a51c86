"""The export contract: trained models leave the run folder (model.safetensors + model.json), plain timm
builds the classifiers, and ``ssl-derm predict`` runs every kind on a new folder (CPU, synthetic data
written by ``ssl-derm data synth``, tiny sizes)."""
import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ssl_derm.cli import main
from ssl_derm.data.decode import load_image
from ssl_derm.serve.loaders import ModelFileError, load_model, read_model_json
from ssl_derm.serve.views import d4_undo, d4_views
from ssl_derm.commands.predict import read_predictions

SIZE = 32
ODD = {"odd_wide": (70, 45), "odd_tall": (40, 66)}  # extra images of their own (W, H) sizes


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """``ssl-derm data synth`` (48 px files) plus a predict folder: the same images, two odd-sized ones and a bad file."""
    root = tmp_path_factory.mktemp("serve")
    assert main(["data", "synth", "--out", str(root / "synth"), "--n", "48", "--size", "48", "--seed", "0"]) == 0
    new = root / "new"
    shutil.copytree(root / "synth" / "images", new)
    src = sorted(new.glob("*.jpg"))[0]
    for name, wh in ODD.items():
        Image.open(src).resize(wh).save(new / f"{name}.png")
    (new / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def _base(root, *extra):
    return [f"data.images=[{root / 'synth' / 'images'}]", f"data.labels={root / 'synth' / 'labels.csv'}",
            f"data.image_size={SIZE}", f"data.cache_dir={root / 'cache'}", "encoder.name=test_resnet",
            "encoder.checkpoint=none", "split.fraction=1.0", "device=cpu", "protocol.feature_batch_size=64", *extra]


def _test_inputs(run, meta, root):
    """The run's test images decoded as its cache did, normalised: (N, 3, S, S) float, and test_probs."""
    ids = json.loads((run / "test_ids.json").read_text())
    x = np.stack([load_image(str(root / "synth" / "images" / f"{i}.jpg"), meta["image_size"])[0] for i in ids])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    return ids, x, np.load(run / "test_probs.npy")


def _check_predictions(out, root, classes):
    rows = read_predictions(out / "predictions.csv")
    n_new = len(list((root / "new").iterdir())) - 1  # all but broken.jpg
    assert len(rows) == n_new and len({r["image_id"] for r in rows}) == n_new
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert all(r["label"] == classes[int(p.argmax())] for r, p in zip(rows, probs))
    bad = (out / "bad_files.txt").read_text().splitlines()
    assert len(bad) == 1 and bad[0].startswith(str(root / "new" / "broken.jpg"))
    return {r["image_id"]: p for r, p in zip(rows, probs)}


@pytest.mark.parametrize("protocol", ["finetune", "linear"])
def test_classifier_export_loads_in_plain_timm_and_predicts(synth, protocol):
    run, out = synth / f"run_{protocol}", synth / f"pred_{protocol}"
    extra = ["train.max_steps=3", "train.batch_size=8", "protocol.eval_every=2"] if protocol == "finetune" else \
        ["protocol.linear_C=[1.0]"]
    cfg = f"configs/finetune/{protocol}.yaml"  # the design card's path (a link to the packaged configs)
    assert main(["finetune", "--config", cfg, "--out", str(run), *_base(synth, *extra)]) == 0
    assert (run / "model.safetensors").is_file()
    m = json.loads((run / "model.json").read_text())
    assert m["kind"] == "classifier" and m["protocol"] == protocol and m["timm_loadable"] and m["encoder_sha256"] is None
    assert m["classes"] == sorted(m["classes"]) and m["num_classes"] == len(m["classes"]) == 4
    # plain timm; timm drops a head of another class count than its pretrained config's unless the overlay says so
    net = timm.create_model(m["timm_name"], pretrained=True, **m["timm_create_kwargs"],
                            pretrained_cfg_overlay=dict(file=str(run / "model.safetensors"), num_classes=m["num_classes"]))
    ids, x, ref = _test_inputs(run, m, synth)
    with torch.no_grad():
        probs = net.eval()(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    assert main(["predict", "--model", str(run), "--images", str(synth / "new"), "--out", str(out), "device=cpu",
                 f"data.labels={synth / 'synth' / 'labels.csv'}", "batch_size=16"]) == 0
    got = _check_predictions(out, synth, m["classes"])
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), ref, atol=1e-4)  # the run's own probabilities
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 48 and metrics["n_without_label"] == 2 and 0 <= metrics["balanced_accuracy"] <= 1


def test_knn_multistage_and_d4_exports_reproduce_the_run(synth):
    import hashlib

    from ssl_derm.encoders import create_encoder, export_encoder

    enc = export_encoder(create_encoder("test_resnet", SIZE), synth / "encoder.safetensors")  # a "pretrained" encoder
    runs = {"knn": ["protocol.knn_k=5", f"encoder.checkpoint={enc}"],
            "linear": ["protocol.feature_stages=2", "protocol.feature_tta=d4", "protocol.linear_C=[1.0]"],
            # pooled over the lesion too: predict runs the default segmenter on each image first
            "linear_lesion": ["protocol.feature_pool=both", "protocol.feature_tta=d4", "protocol.linear_C=[1.0]"]}
    for name, extra in runs.items():
        run = synth / f"run_{name}_frozen"
        config = name.split("_")[0]
        assert main(["finetune", "--config", f"finetune/{config}", "--out", str(run), *_base(synth, *extra)]) == 0
        clf = load_model(run)
        assert clf.meta["timm_loadable"] is False and clf.meta["head"] == config
        assert clf.meta["feature_pool"] == ("both" if name == "linear_lesion" else "avg")
        assert clf.meta["encoder_sha256"] == (hashlib.sha256(enc.read_bytes()).hexdigest() if name == "knn" else None)
        ids, _, ref = _test_inputs(run, clf.meta, synth)
        imgs = [np.asarray(Image.open(synth / "synth" / "images" / f"{i}.jpg")) for i in ids]  # 48 px, resized inside
        np.testing.assert_allclose(clf.predict(imgs), ref, atol=1e-4)
    out = synth / "pred_knn"
    assert main(["predict", "--model", str(synth / "run_knn_frozen"), "--images", str(synth / "new"), "--out", str(out),
                 "device=cpu", "--tta", "d4"]) == 0
    _check_predictions(out, synth, clf.classes)


def _masks_equal(run_masks, pred_masks, ids):
    for i in ids:
        a, b = np.asarray(Image.open(run_masks / f"{i}.png")), np.asarray(Image.open(pred_masks / f"{i}.png"))
        assert a.shape == b.shape and np.array_equal(a, b), i


@pytest.mark.parametrize("config", ["selftrain", "default"])
def test_segmenter_export_and_predict_one_mask_per_image(synth, config):
    run, out = synth / f"seg_{config}", synth / f"segpred_{config}"
    extra = ["selftrain.image_size=32", "train.max_steps=2", "train.batch_size=4", "encoder.name=test_resnet",
             "selftrain.decoder_widths=[16,8]"] if config == "selftrain" else []
    assert main(["segment", "--config", f"configs/segment/{config}.yaml", "--out", str(run),
                 f"data.images=[{synth / 'synth' / 'images'}]", f"data.masks={synth / 'synth' / 'masks'}",
                 f"data.image_size={SIZE}", f"data.cache_dir={synth / 'cache'}", "device=cpu", *extra]) == 0
    m = json.loads((run / "model.json").read_text())
    assert m["kind"] == "segmenter" and m["segmenter"] == ("net" if config == "selftrain" else "classical")
    assert (run / "model.safetensors").is_file() == (config == "selftrain")
    assert main(["predict", "--model", str(run), "--images", str(synth / "new"), "--out", str(out),
                 f"data.masks={synth / 'synth' / 'masks'}", "overlays=3", "batch_size=16"]) == 0
    files = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert len(files) == len(list((synth / "new").iterdir())) - 1 and "broken" not in files
    for name, (w, h) in ODD.items():  # each mask at its own image's size, 0/255
        a = np.asarray(Image.open(out / "masks" / f"{name}.png").convert("L"))
        assert a.shape == (h, w) and set(np.unique(a)) <= {0, 255}
    assert len(list((out / "overlays").glob("*.png"))) == 3
    _masks_equal(run / "masks", out / "masks", [p.stem for p in (synth / "synth" / "images").glob("*.jpg")])
    got, ref = json.loads((out / "metrics.json").read_text()), json.loads((run / "metrics.json").read_text())
    assert got["mean"]["n"] == 48 and got["mean"]["dice"] == pytest.approx(ref["mean"]["dice"], abs=1e-9)
    assert (out / "bad_files.txt").read_text().count("broken.jpg") == 1


def test_d4_views_undo_to_the_input():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    views = d4_views(x)
    assert len(views) == 8 and len({tuple(v.flatten().tolist()) for _, _, v in views}) == 8
    for k, f, v in views:
        assert torch.equal(d4_undo(v, k, f), x)


def test_unusable_model_folders_are_one_line_errors(synth, tmp_path, capsys):
    with pytest.raises(ModelFileError, match="has no model.json"):
        read_model_json(synth / "synth")
    from ssl_derm.serve.export import save_model

    run = tmp_path / "run"
    run.mkdir()
    net = timm.create_model("test_resnet", num_classes=2)
    save_model(run, net.state_dict(), {"kind": "classifier", "timm_name": "test_resnet", "image_size": SIZE,
                                       "mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b"], "num_classes": 2,
                                       "head": "timm", "timm_create_kwargs": {}, "protocol": "finetune"})
    assert load_model(run).predict(np.zeros((3, 40, 50, 3), np.uint8)).shape == (3, 2)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "kind": "detector"}))
    with pytest.raises(ModelFileError, match="kind 'detector'"):
        read_model_json(run)
    (run / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelFileError, match="format_version 99"):
        read_model_json(run)
    (run / "model.json").write_text(json.dumps(meta))
    (run / "model.safetensors").unlink()
    assert main(["predict", "--model", str(run), "--images", str(synth / "new"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors' is missing" in err[0]
    (run / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelFileError, match="cannot be read as safetensors"):
        load_model(run)


def test_fewmask_unet_and_encoder_segmenter_exports_predict(synth):
    import ssl_derm

    data = {"data.images": [str(synth / "synth" / "images")], "data.masks": str(synth / "synth" / "masks"),
            "data.image_size": SIZE, "data.cache_dir": str(synth / "cache"), "device": "cpu",
            "encoder.name": "test_resnet", "encoder.checkpoint": "none"}
    run = synth / "fewmask"
    ssl_derm.finetune("finetune/fewmask_seg", {**data, "split.fraction": 1.0, "train.max_steps": 2, "train.batch_size": 4,
                                               "protocol.seg_decoder_channels": [8, 8]}, out=str(run))
    seg = ssl_derm.load_segmenter(run)
    assert seg.meta["method"] == "fewmask_seg" and seg.meta["arch"]["decoder_widths"] == [8, 8]
    imgs = [np.asarray(Image.open(p)) for p in sorted((synth / "new").glob("odd_*.png"))]
    masks = seg.predict(imgs, tta="d4")
    assert [m.shape for m in masks] == [a.shape[:2] for a in imgs] and all(m.dtype == bool for m in masks)
    run = synth / "kmeans_features"  # a per-image method that reads an encoder: its weights travel with it
    ssl_derm.segment("segment/kmeans_features", {**data, "segment.feature_size": 8}, out=str(run))
    m = json.loads((run / "model.json").read_text())
    assert m["segmenter"] == "classical" and m["uses_encoder"] and (run / "model.safetensors").is_file()
    out = synth / "pred_kmeans_features"
    assert ssl_derm.predict(run, synth / "synth" / "images", out=str(out), overrides=["overlays=0"])["n_images"] == 48
    _masks_equal(run / "masks", out / "masks", [p.stem for p in (synth / "synth" / "images").glob("*.jpg")])
