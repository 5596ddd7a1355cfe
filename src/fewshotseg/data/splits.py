"""Which classes meta-train, validate and test: `resolve_splits(root, scheme)` -> {"train", "val", "test"}.

Schemes:
  fss1000      the paper's rule: test = FSS-1000's official 240 test classes; val = the alphabetically last 200
               of the 760 others (`saxophone` ... `zucchini`, held out); train = the remaining 560. The
               lists ship with the package; class folders on disk in neither list are left out.
  fss1000-all  train = all 760 non-test classes, as the paper's ~330 meta-training epochs imply (50,000
               iterations x 5 tasks / 760). val = the same last 200, which are then NOT held out: val scores
               measure fit to training classes, useful for tuning the adaptation routine but not for selection.
  fp-k         test = the 5 FP-k classes (airliner, bus, motorbike, potted_plant, television); train = every
               other class in the dataset (995 on FSS-1000, like the reference code); val = the last 200 of
               those sorted, NOT held out (a subset of train).
  hsnet:DIR    HSNet's 520/240/240 split, read from DIR/trn.txt, DIR/val.txt and DIR/test.txt (one class per
               line). We cannot ship HSNet's lists: copy them from its repository (data/splits/fss/).
  file:PATH    a JSON file {"train": [...], "val": [...], "test": [...]} ("val" may be omitted).
  auto         `<root>/splits.json` if it exists (the built-in synthetic benchmark writes one), else fss1000 if
               the dataset holds the 240 FSS-1000 test classes, else a `DataError` asking for a scheme.

Every class a split names must exist on disk (a `DataError` lists the missing ones), and for hsnet/file the
test classes must not appear in train or val.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from fewshotseg.data.dataset import DataError

SCHEMES = ("auto", "fss1000", "fss1000-all", "fp-k", "hsnet:DIR", "file:PATH")
SPLITS = ("train", "val", "test")  # the class lists every scheme gives
VAL_CLASSES = 200  # the paper's number of validation tasks
SPLIT_FILE = "splits.json"


def builtin_list(name: str) -> list[str]:
    """A class list shipped with the package: fss_train_set, fss_test_set, derived_val_200_from_train, fp-k_test_set."""
    text = resources.files("fewshotseg.data").joinpath("splits", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def dataset_classes(root: Path | str) -> list[str]:
    """Class folder names under an FSS-layout root (hidden folders ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; pass the dataset folder that holds one sub-folder per class"
        )
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")


def _read_lines(path: Path, hint: str) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror}); {hint}") from None


def _from_json(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f'{path}: cannot read the split file ({err}); write JSON {{"train": [...], "val": [...], "test": [...]}}'
        ) from None
    if (
        not isinstance(data, dict)
        or not {"train", "test"} <= set(data)
        or set(data) - set(SPLITS)
    ):
        raise DataError(
            f'{path}: a split file holds exactly the keys "train", "test" and optionally "val" (lists of class names)'
        )
    return {key: [str(name) for name in data.get(key, [])] for key in SPLITS}


def _hsnet(folder: Path) -> dict[str, list[str]]:
    hint = (
        f"HSNet's split lists are not shipped with fewshotseg: copy trn.txt, val.txt and test.txt from HSNet's "
        f"data/splits/fss/ (github.com/juhongm999/hsnet) into {folder}"
    )
    return {
        key: _read_lines(folder / f"{name}.txt", hint)
        for key, name in (("train", "trn"), ("val", "val"), ("test", "test"))
    }


def _fss1000(all_train: bool) -> dict[str, list[str]]:
    train = sorted(builtin_list("fss_train_set"))
    val = train[-VAL_CLASSES:]
    return {
        "train": train if all_train else train[:-VAL_CLASSES],
        "val": val,
        "test": sorted(builtin_list("fss_test_set")),
    }


def _fp_k(classes: Iterable[str]) -> dict[str, list[str]]:
    test = sorted(builtin_list("fp-k_test_set"))
    train = sorted(set(classes) - set(test))
    return {"train": train, "val": train[-VAL_CLASSES:], "test": test}


def _check(splits: dict[str, list[str]], classes: list[str], where: str, disjoint_test: bool) -> None:
    named = set().union(*splits.values())
    missing = sorted(named - set(classes))
    if missing:
        raise DataError(
            f"{where}: {len(missing)} class(es) of the split are not in the dataset: {_shown(missing)}"
        )
    if disjoint_test:
        leaked = sorted(set(splits["test"]) & (set(splits["train"]) | set(splits["val"])))
        if leaked:
            raise DataError(
                f"{where}: test classes also in train or val: {_shown(leaked)}; a test class must be unseen"
            )


def resolve_splits(
    root: Path | str, scheme: str = "auto", *, classes: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """{"train", "val", "test"} class lists (each sorted) of the dataset at `root` under a named scheme.

    `classes` are the dataset's class names; by default the class folders under `root`.
    """
    root = Path(root)
    names = sorted(classes) if classes is not None else dataset_classes(root)
    where = f"{root} (splits {scheme!r})"
    if scheme == "auto":
        if (root / SPLIT_FILE).is_file():
            scheme = f"file:{root / SPLIT_FILE}"
        else:
            absent = sorted(set(builtin_list("fss_test_set")) - set(names))
            if absent:
                raise DataError(
                    f"{root}: cannot choose a split: there is no {SPLIT_FILE} and {len(absent)} of the 240 FSS-1000 "
                    f"test classes are absent (e.g. {_shown(absent[:5])}). Pass a scheme: {', '.join(SCHEMES[1:])}"
                )
            scheme = "fss1000"
    if scheme in ("fss1000", "fss1000-all"):
        splits = _fss1000(all_train=scheme == "fss1000-all")
    elif scheme == "fp-k":
        splits = _fp_k(names)
    elif scheme == "hsnet":
        raise DataError(
            "the hsnet scheme reads HSNet's lists from a folder: pass hsnet:DIR, DIR holding trn.txt, val.txt, test.txt"
        )
    elif scheme.startswith("hsnet:"):
        splits = _hsnet(Path(scheme.removeprefix("hsnet:")).expanduser())
    elif scheme.startswith("file:"):
        splits = _from_json(Path(scheme.removeprefix("file:")).expanduser())
    else:
        raise DataError(f"unknown split scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    splits = {key: sorted(value) for key, value in splits.items()}
    _check(splits, names, where, disjoint_test=scheme.startswith(("hsnet:", "file:")))
    return splits
