"""`data check` over a corpus of bad and odd files, and the decoder's colour conversions."""
import io

import numpy as np
import pytest
from PIL import Image

from ssl_derm.data import DataError, check_data, read_labels, run_check
from ssl_derm.data import decode

W, H = 40, 30


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(w=W, h=H):
    m = np.zeros((h, w), np.uint8)
    m[5:20, 10:30] = 255
    return Image.fromarray(m)


@pytest.fixture()
def corpus(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    (img / "sub").mkdir(parents=True)
    msk.mkdir()
    good = {
        "good_rgb.jpg": Image.fromarray(_rgb(1)),
        "gray.png": Image.fromarray(_rgb(2)[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([_rgb(3), np.full((H, W), 128, np.uint8)])),
        "cmyk.jpg": Image.fromarray(_rgb(4)).convert("CMYK"),
        "g16.png": Image.fromarray((np.arange(H * W).reshape(H, W) * 50).astype(np.uint16)),
        "sub/nested.bmp": Image.fromarray(_rgb(5)),
        "nolabel.png": Image.fromarray(_rgb(6)),
        "nomask.jpg": Image.fromarray(_rgb(7)),
        "wrongmask.jpg": Image.fromarray(_rgb(8)),
        "nonbin.jpg": Image.fromarray(_rgb(9)),
    }
    for name, im in good.items():
        im.save(img / name)
    (img / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_rgb(10)).save(buf, format="JPEG", quality=95)
    (img / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "text.jpg").write_text("this is not an image\n")
    (img / "notes.txt").write_text("ignored: not an image extension")
    for stem in ("good_rgb", "rgba", "cmyk", "g16", "nested", "nolabel", "empty", "trunc", "text"):
        _mask().save(msk / f"{stem}.png")
    _mask().save(msk / "gray_segmentation.png")  # ISIC naming is accepted
    _mask(W * 2, H * 2).save(msk / "wrongmask.png")
    Image.fromarray((np.arange(H * W).reshape(H, W) % 200).astype(np.uint8)).save(msk / "nonbin.png")
    _mask().save(msk / "orphan.png")
    rows = ["image_id,label,lesion_id,extra"] + [
        f"{s},{'a' if i % 2 else 'b'},L{i},x" for i, s in enumerate(
            ["good_rgb", "gray", "rgba", "cmyk", "g16", "nested", "nomask", "wrongmask", "nonbin", "empty",
             "trunc", "text", "ghost"])]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_check_names_every_bad_file_with_its_reason(corpus, capsys):
    rep = check_data([str(corpus / "images")], str(corpus / "masks"), str(corpus / "labels.csv"), progress=False)
    probs = {p.split("/")[-1]: r for p, r in rep.problems}
    assert probs["empty.jpg"] == decode.ZERO_BYTES
    assert probs["trunc.jpg"].startswith(decode.TRUNCATED)
    assert probs["text.jpg"] == decode.NOT_IMAGE
    assert probs["wrongmask.png"].startswith("mask size differs from its image: mask 80x60, image 40x30")
    assert probs["nonbin.png"].startswith("mask not binary")
    assert probs["nolabel.png"].startswith("image without label")
    assert probs["nomask.jpg"].startswith("image without mask")
    assert probs["orphan.png"].startswith("mask without image")
    assert probs["labels.csv"] == "label without image: 'ghost' has no image file"
    for name in ("good_rgb.jpg", "gray.png", "rgba.png", "cmyk.jpg", "g16.png", "nested.bmp", "notes.txt"):
        assert name not in probs  # odd colour modes are usable, non-image extensions are not listed
    assert len(rep.problems) == 9
    assert rep.n_images == 13 and rep.n_images_ok == 10
    assert rep.n_masks_ok == 7  # good_rgb gray rgba cmyk g16 nested nolabel
    assert rep.classes == {"a": 4, "b": 5}
    assert rep.sizes == {(W, H): 10}

    assert run_check([str(corpus / "images")], str(corpus / "masks"), str(corpus / "labels.csv"), progress=False) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS: 9" in out and "trunc.jpg: corrupt or truncated" in out and "Traceback" not in out


def test_check_clean_folder_exits_zero(tmp_path, capsys):
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(tmp_path / "im" / f"x{i}.jpg")
        Image.fromarray((np.asarray(_mask()) > 0).astype(np.uint8)).save(tmp_path / "m" / f"x{i}.png")  # {0,1}
    (tmp_path / "l.csv").write_text("image_id,label\nx0,a\nx1,a\nx2,b\n")
    assert run_check([str(tmp_path / "im")], str(tmp_path / "m"), str(tmp_path / "l.csv"), progress=False) == 0
    out = capsys.readouterr().out
    assert "OK: all 3 images usable" in out and "classes (2): a 2, b 1" in out


def test_check_missing_folder_and_bad_csv_do_not_raise(tmp_path, capsys):
    assert run_check([str(tmp_path / "nope")], progress=False) == 1
    assert "does not exist" in capsys.readouterr().out
    (tmp_path / "im").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "im" / "a.jpg")
    (tmp_path / "l.csv").write_text("image,diagnosis\na,nv\n")
    assert run_check([str(tmp_path / "im")], labels=str(tmp_path / "l.csv"), progress=False) == 1
    out = capsys.readouterr().out
    assert "no column 'image_id' or 'label'" in out and "image, diagnosis" in out


def test_read_labels_errors_name_file_and_columns(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("image_id,dx\na,nv\n")
    with pytest.raises(DataError, match=r"labels\.csv' has no column 'label'; its columns are: image_id, dx"):
        read_labels(str(p))
    p.write_text("image_id,label\na,nv\na,mel\n")
    with pytest.raises(DataError, match="two different labels: a"):
        read_labels(str(p))
    p.write_text("image_id,label,split\na.jpg,nv,train\nb,,test\n10,x,\n")
    t = read_labels(str(p))
    assert t.label == {"a": "nv", "b": "", "10": "x"} and t.split["a"] == "train" and t.classes() == ["nv", "x"]


def test_decoder_colour_modes(corpus):
    img = corpus / "images"
    a, hw, r = decode.load_image(str(img / "gray.png"))
    assert r is None and hw == (H, W) and a.shape == (H, W, 3) and (a[..., 0] == a[..., 2]).all()
    a, _, _ = decode.load_image(str(img / "rgba.png"))
    assert (a == _rgb(3)).all()  # alpha dropped, colour kept
    a, _, _ = decode.load_image(str(img / "g16.png"))
    src = (np.arange(H * W).reshape(H, W) * 50).astype(np.uint16)
    assert np.abs(a[..., 0].astype(int) - (src / 257).astype(int)).max() <= 1  # scaled, not clipped at 255
    a, hw, r = decode.load_image(str(img / "cmyk.jpg"), size=16)
    assert r is None and hw == (H, W) and a.shape == (16, 16, 3)
    m, r = decode.load_mask(str(corpus / "masks" / "good_rgb.png"), (H, W), size=8)
    assert r is None and m.shape == (8, 8) and set(np.unique(m)) <= {0, 1} and m.any()
