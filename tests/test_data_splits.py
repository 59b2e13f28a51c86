"""Seeded splits: stratified, grouped by lesion, reproducible, nested low-label fractions, reused from disk."""
import json

import numpy as np
import pytest

from ssl_derm.data import DataError, FRACTIONS, load_or_make_split, make_split
from ssl_derm.data import splits as splits_mod


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(1)
    n = 400
    ids = [f"img{i:04d}" for i in range(n)]
    labels = rng.choice(4, n, p=[0.55, 0.25, 0.15, 0.05])
    lesions = [f"les{i // 2 if labels[i] == 0 else i}" for i in range(n)]  # class-0 images come in pairs
    labels[rng.random(n) < 0.1] = -1  # some unlabelled
    return ids, labels, lesions


def test_split_properties(table):
    ids, labels, lesions = table
    s = make_split(ids, labels, lesions, test_frac=0.2, val_frac=0.1, seed=0)
    lab_of = dict(zip(ids, labels))
    les_of = dict(zip(ids, lesions))
    train, val, test = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == {i for i in ids if lab_of[i] >= 0}
    assert set(s["unlabeled"]) == {i for i in ids if lab_of[i] < 0}
    sides = [{les_of[i] for i in part} for part in (train, val, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    n_lab = sum(1 for v in labels if v >= 0)
    assert abs(len(test) / n_lab - 0.2) < 0.04 and abs(len(val) / n_lab - 0.1) < 0.04
    for c in range(4):  # stratified: each class's share of test is close to its share overall
        share_all = np.mean([lab_of[i] == c for i in ids if lab_of[i] >= 0])
        share_test = np.mean([lab_of[i] == c for i in test])
        assert abs(share_all - share_test) < 0.05
    prev = set()
    for f in FRACTIONS:
        sub = s["labelled"][str(f)]
        assert prev <= set(sub) <= train and not set(sub) & test
        assert {lab_of[i] for i in sub} == {0, 1, 2, 3}  # every class, even at 1%
        prev = set(sub)
    assert set(s["labelled"]["1.0"]) == train
    assert 4 <= len(s["labelled"]["0.01"]) <= 8
    assert abs(len(s["labelled"]["0.25"]) - 0.25 * len(train)) <= 4


def test_split_reproducible_by_seed(table):
    ids, labels, lesions = table
    a, b = make_split(ids, labels, lesions, seed=3), make_split(ids, labels, lesions, seed=3)
    assert a == b
    c = make_split(ids, labels, lesions, seed=4)
    assert c["test"] != a["test"] and c["labelled"]["0.1"] != a["labelled"]["0.1"]
    no_groups = make_split(ids, labels, None, seed=3)  # each image its own group
    assert no_groups["params"]["grouped_by_lesion"] is False and len(no_groups["test"]) > 0


def test_split_file_written_once_and_checked(table, tmp_path, monkeypatch):
    ids, labels, lesions = table
    path = tmp_path / "splits" / "s.json"
    first = load_or_make_split(path, ids, labels, lesions, seed=0)
    assert json.loads(path.read_text())["test"] == first["test"]

    def no_remake(*a, **k):
        raise AssertionError("split was made again")

    monkeypatch.setattr(splits_mod, "make_split", no_remake)
    assert load_or_make_split(path, ids, labels, lesions, seed=0) == first
    with pytest.raises(DataError, match=r"seed \(0 there, 1 now\).*delete it.*data\.split_file"):
        load_or_make_split(path, ids, labels, lesions, seed=1)
    other = labels.copy()
    other[0] = 3 if other[0] != 3 else 2
    with pytest.raises(DataError, match="differs in: ids/labels/lesion ids"):
        load_or_make_split(path, ids, other, lesions, seed=0)
    path.write_text("not json")
    with pytest.raises(DataError, match="not a split this program wrote"):
        load_or_make_split(path, ids, labels, lesions, seed=0)


def test_split_bad_inputs():
    with pytest.raises(DataError, match="3 ids but 2 labels"):
        make_split(["a", "b", "c"], [0, 1])
    with pytest.raises(DataError, match="test_frac"):
        make_split(["a", "b"], [0, 1], test_frac=0.7, val_frac=0.4)
    with pytest.raises(DataError, match="too few"):
        make_split(["a", "b", "c"], [0, 1, 0], test_frac=0.2)
    s = make_split(["a", "b", "c"], [0, 1, -1], test_frac=0, val_frac=0)
    assert s["train"] == ["a", "b"] and s["unlabeled"] == ["c"] and s["labelled"]["0.01"] == ["a", "b"]


def _bound_split(tmp_path, table):
    from ssl_derm.data.splits import Split

    ids, labels, lesions = table
    data = load_or_make_split(tmp_path / "s.json", ids, labels, lesions, seed=0)
    return Split(data, ids, labels, tmp_path / "s.json"), ids, labels


def test_split_maps_side_fraction_and_seed_to_rows(tmp_path, table):
    from ssl_derm.data.splits import SplitError, split_rows

    split, ids, labels = _bound_split(tmp_path, table)
    rows = split.rows(0.1)
    assert {k: list(v) for k, v in rows.items()} == {k: list(v) for k, v in split_rows(ids, labels, split.data, 0.1).items()}
    assert [ids[r] for r in rows["test"]] == sorted(split.data["test"], key=ids.index)
    assert set(rows["labelled"]) <= set(split.side_rows("train"))
    redrawn = split.rows(0.1, redraw_seed=5)
    assert (redrawn["test"] == rows["test"]).all() and len(redrawn["labelled"]) == len(rows["labelled"])
    assert set(redrawn["labelled"]) != set(rows["labelled"])
    with pytest.raises(SplitError, match="available fractions"):
        split.rows(0.3)
    outside = split.rows_outside("test")
    assert len(outside) + len(rows["test"]) == len(ids) and not set(outside) & set(rows["test"])


def test_split_read_for_exclusion_names_the_key(tmp_path, table):
    from ssl_derm.data.splits import Split, SplitError

    split, ids, _ = _bound_split(tmp_path, table)
    other = Split.read(tmp_path / "s.json", ids[:50] + ["extra"])  # another dataset: ids need not match
    assert len(other.rows_outside("test")) == 51 - len(set(ids[:50]) & set(split.data["test"]))
    with pytest.raises(SplitError, match="data.exclude_split.*does not exist"):
        Split.read(tmp_path / "nope.json", ids)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SplitError, match="no 'test' ids"):
        Split.read(tmp_path / "bad.json", ids)
