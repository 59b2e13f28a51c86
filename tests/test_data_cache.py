"""Decode-once cache and load_dataset: reuse, rebuild, dedupe, bad files, labels, masks, synthetic set."""
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_derm.config import DataConfig
from ssl_derm.data import DataError, SYNTH_CLASSES, decode, default_cache_dir, list_images, load_dataset


def _write(folder, names, colour_of=lambda i: (10 * i, 100, 200), size=(24, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((size[1], size[0], 3), colour_of(i), np.uint8)).save(folder / f"{n}.png")


def _cfg(tmp_path, images, **kw):
    return DataConfig(images=[str(p) for p in images], image_size=16, cache_dir=str(tmp_path / "cache"), **kw)


def test_cache_reused_without_decoding_and_rebuilt_on_change(tmp_path, monkeypatch):
    _write(tmp_path / "a" / "deep" / "er", [f"x{i}" for i in range(5)])
    cfg = _cfg(tmp_path, [tmp_path / "a"])
    ds = load_dataset(cfg, progress=False)
    assert isinstance(ds.images, np.memmap) and ds.images.shape == (5, 16, 16, 3)
    assert ds.ids == [f"x{i}" for i in range(5)] and ds.orig_sizes[0] == (20, 24)
    assert (ds.images[3] == (30, 100, 200)).all()

    def boom(*a):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "image_worker", boom)
    again = load_dataset(cfg, progress=False)
    assert again.cache_entry == ds.cache_entry and (np.asarray(again.images) == np.asarray(ds.images)).all()

    _write(tmp_path / "a", ["y"])  # a new file -> new key -> the (now failing) decoder runs
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(cfg, progress=False)
    monkeypatch.undo()
    grown = load_dataset(cfg, progress=False)
    assert len(grown) == 6 and grown.cache_entry != ds.cache_entry

    p = tmp_path / "a" / "y.png"  # same names, changed content and mtime -> rebuilt with the new pixels
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(p)
    os.utime(p, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    changed = load_dataset(cfg, progress=False)
    assert changed.cache_entry != grown.cache_entry and changed.images[changed.ids.index("y")].max() == 0
    assert not any(n.startswith(".") for n in os.listdir(tmp_path / "cache"))  # no temp folders left


def test_roots_pooled_and_deduplicated_first_root_wins(tmp_path, capsys):
    _write(tmp_path / "r1", ["a", "b", "c"], colour_of=lambda i: (1, 1, 1))
    _write(tmp_path / "r2", ["b", "c", "d"], colour_of=lambda i: (2, 2, 2))
    (tmp_path / "r2" / "d.jpg").write_bytes((tmp_path / "r2" / "d.png").read_bytes())  # same id twice in one root
    found = list_images([str(tmp_path / "r1"), str(tmp_path / "r2")])
    assert found.ids == ["a", "b", "c", "d"] and len(found.duplicates) == 3
    ds = load_dataset(_cfg(tmp_path, [tmp_path / "r1", tmp_path / "r2"]), progress=False)
    assert ds.ids == ["a", "b", "c", "d"]
    assert (ds.images[:3] == 1).all() and (ds.images[3] == 2).all()
    assert "3 files share an id" in capsys.readouterr().err


def test_bad_files_skipped_or_error(tmp_path, capsys):
    _write(tmp_path / "im", ["ok1", "ok2"])
    (tmp_path / "im" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_dataset(_cfg(tmp_path, [tmp_path / "im"]), progress=False)
    assert ds.ids == ["ok1", "ok2"]
    err = capsys.readouterr().err
    assert "skipped 1 of 3 image files" in err and "bad_files.txt" in err
    assert "broken.jpg" in (ds.cache_entry / "bad_files.txt").read_text()
    with pytest.raises(DataError, match=r"(?s)1 of 3 image files cannot be used.*broken\.jpg: corrupt or truncated"):
        load_dataset(_cfg(tmp_path, [tmp_path / "im"], on_bad="error"), progress=False)


def test_labels_join_and_errors(tmp_path):
    _write(tmp_path / "im", ["p", "q", "r", "s"])
    (tmp_path / "l.csv").write_text("image_id,label,lesion_id,split\np,mel,L1,train\nq,nv,L1,test\nr,,L2,\nz,nv,L9,\n")
    cfg = _cfg(tmp_path, [tmp_path / "im"], labels=str(tmp_path / "l.csv"))
    ds = load_dataset(cfg, need_labels=True, progress=False)
    assert ds.classes == ["mel", "nv"] and ds.labels.tolist() == [0, 1, -1, -1] and ds.labels.dtype == np.int64
    assert ds.lesion_ids == ["L1", "L1", "L2", "s"] and ds.given_split == ["train", "test", "", ""]
    with pytest.raises(DataError, match="data.labels is not set"):
        load_dataset(_cfg(tmp_path, [tmp_path / "im"]), need_labels=True, progress=False)
    (tmp_path / "bad.csv").write_text("id,dx\np,nv\n")
    with pytest.raises(DataError, match=r"bad\.csv' has no column 'image_id' or 'label'; its columns are: id, dx"):
        load_dataset(_cfg(tmp_path, [tmp_path / "im"], labels=str(tmp_path / "bad.csv")), progress=False)


def test_masks_join_resize_and_missing(tmp_path):
    _write(tmp_path / "im", ["m1", "m2", "m3"])
    (tmp_path / "mk").mkdir()
    m = np.zeros((20, 24), np.uint8)
    m[:, :12] = 255
    Image.fromarray(m).save(tmp_path / "mk" / "m1.png")
    Image.fromarray(m // 255).save(tmp_path / "mk" / "m2_segmentation.png")
    cfg = _cfg(tmp_path, [tmp_path / "im"], masks=str(tmp_path / "mk"))
    ds = load_dataset(cfg, progress=False)
    assert ds.has_mask.tolist() == [True, True, False] and ds.masks.shape == (3, 16, 16)
    assert (ds.masks[0][:, :8] == 1).all() and (ds.masks[0][:, 8:] == 0).all() and (ds.masks[1] == ds.masks[0]).all()
    assert ds.masks[2].max() == 0
    with pytest.raises(DataError, match=r"1 of 3 images have no usable mask.*m3"):
        load_dataset(cfg, need_masks=True, progress=False)
    with pytest.raises(DataError, match="data.masks is not set"):
        load_dataset(_cfg(tmp_path, [tmp_path / "im"]), need_masks=True, progress=False)


def test_synthetic_dataset_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_DERM_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    cfg = DataConfig(image_size=32, synthetic_n=40)  # cache_dir from the environment
    ds = load_dataset(cfg, need_labels=True, need_masks=True, progress=False)
    assert len(ds) == 40 and ds.classes == list(SYNTH_CLASSES) and ds.lesion_ids is not None
    assert set(np.unique(ds.masks)) == {0, 1} and ds.has_mask.all() and (ds.labels >= 0).all()
    assert str(ds.cache_entry).startswith(str(tmp_path / "envcache"))
    x = ds.batch(torch.tensor([5, 2, 5]), device="cpu")
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[1], torch.from_numpy(np.asarray(ds.images[2])).permute(2, 0, 1))
    assert torch.equal(x[0], x[2])
    mk = ds.mask_batch(np.array([1, 0]))
    assert mk.shape == (2, 1, 32, 32) and torch.equal(mk[0, 0], torch.from_numpy(np.asarray(ds.masks[1])))
    assert ds.index_of([ds.ids[7], ds.ids[3]]).tolist() == [7, 3]
    with pytest.raises(DataError, match="cannot be pooled"):
        load_dataset(DataConfig(images=["synthetic", str(tmp_path)]), progress=False)
