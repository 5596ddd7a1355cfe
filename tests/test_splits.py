"""Split schemes: sizes, disjointness where promised, and errors that list what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshotseg.data.dataset import DataError
from fewshotseg.data.splits import builtin_list, resolve_splits

TRAIN = builtin_list("fss_train_set")
TEST = builtin_list("fss_test_set")
FP_K = builtin_list("fp-k_test_set")


@pytest.fixture
def fss_root(tmp_path: Path) -> Path:
    """An FSS-1000-shaped root: the 1000 class folders (empty: splits only look at names)."""
    for name in TRAIN + TEST:
        (tmp_path / name).mkdir()
    return tmp_path


def test_shipped_lists() -> None:
    assert (len(TRAIN), len(set(TRAIN)), len(TEST), len(set(TEST)), len(FP_K)) == (760, 760, 240, 240, 5)
    assert not set(TRAIN) & set(TEST)
    assert (
        builtin_list("derived_val_200_from_train") == sorted(TRAIN)[-200:]
    )  # the paper's rule, written down
    assert '"thors_hammer"' in TRAIN and "abe's_flyingfish" in TEST


def test_fss1000_is_560_200_240_and_disjoint(fss_root: Path) -> None:
    splits = resolve_splits(fss_root, "fss1000")
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (560, 200, 240)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(TRAIN + TEST)
    assert splits["val"][0] == "saxophone" and splits["val"][-1] == "zucchini"
    assert resolve_splits(fss_root) == splits  # auto: the 240 test classes are there


def test_fss1000_all_trains_on_760_with_val_inside_train(fss_root: Path) -> None:
    splits = resolve_splits(fss_root, "fss1000-all")
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (760, 200, 240)
    assert set(splits["val"]) <= set(splits["train"])  # documented: val is NOT held out
    assert not set(splits["train"]) & set(splits["test"])


def test_fp_k_holds_out_the_five_tasks(fss_root: Path) -> None:
    splits = resolve_splits(fss_root, "fp-k")
    assert splits["test"] == sorted(FP_K)
    assert len(splits["train"]) == 995 and not set(splits["train"]) & set(FP_K)
    assert len(splits["val"]) == 200 and set(splits["val"]) <= set(splits["train"])


def test_missing_classes_are_listed(fss_root: Path) -> None:
    for name in ("zucchini", "bus"):
        (fss_root / name).rmdir()
    with pytest.raises(DataError, match=r"2 class\(es\) of the split are not in the dataset: bus, zucchini"):
        resolve_splits(fss_root, "fss1000-all")
    with pytest.raises(DataError, match="bus"):
        resolve_splits(fss_root, "fp-k")
    with pytest.raises(DataError, match="Pass a scheme: fss1000"):
        resolve_splits(fss_root, "auto")  # the 240 test classes are no longer all there


def test_auto_prefers_splits_json_and_file_scheme(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["b", "a"], "val": ["c"], "test": ["d"]}))
    assert resolve_splits(tmp_path) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"train": ["a", "b", "c"], "test": ["d"]}))
    assert resolve_splits(tmp_path, f"file:{other}")["val"] == []
    other.write_text(json.dumps({"train": ["a", "d"], "test": ["d"]}))
    with pytest.raises(DataError, match="test classes also in train or val: d"):
        resolve_splits(tmp_path, f"file:{other}")
    other.write_text(json.dumps({"training": ["a"]}))
    with pytest.raises(DataError, match=str(other)):
        resolve_splits(tmp_path, f"file:{other}")
    (tmp_path / "splits.json").unlink()
    with pytest.raises(DataError, match="Pass a scheme"):
        resolve_splits(tmp_path)


def test_hsnet_reads_its_lists_or_says_where_to_get_them(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "data" / name).mkdir(parents=True)
    lists = tmp_path / "hsnet"
    lists.mkdir()
    with pytest.raises(DataError, match="juhongm999/hsnet"):
        resolve_splits(tmp_path / "data", f"hsnet:{lists}")
    for file, name in (("trn", "a"), ("val", "b"), ("test", "c")):
        (lists / f"{file}.txt").write_text(f"{name}\n")
    assert resolve_splits(tmp_path / "data", f"hsnet:{lists}") == {
        "train": ["a"],
        "val": ["b"],
        "test": ["c"],
    }


def test_unknown_scheme_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected one of auto, fss1000, fss1000-all, fp-k"):
        resolve_splits(tmp_path, "paper")
