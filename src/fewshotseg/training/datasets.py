"""The classes both trainers learn from: the training split and, for meta-training's validation, the val split."""

from __future__ import annotations

from pathlib import Path

from fewshotseg.data.dataset import SegmentationDataset


def load_train_val(data: str | Path, size: int, splits: str, fold: int, *,
                   val: bool = True) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """(train, val) of `--data` at `size` px. With a fold (PASCAL-5i / COCO-20i, `fold >= 0`): the fold's other
    classes, on the training images and on the evaluation images. Without: the classes the `--splits` scheme
    names. val is None when not asked for (`val=False`: nothing more is loaded) or when the scheme names no
    validation class."""
    from fewshotseg.data.cache import load_dataset, load_split
    from fewshotseg.data.splits import resolve_splits

    if fold >= 0:
        return load_split(data, size, "train", fold=fold), load_split(data, size, "val", fold=fold) if val else None
    dataset = load_dataset(data, size)
    chosen = resolve_splits(dataset.root, splits, classes=dataset.names)
    return dataset.subset(chosen["train"]), dataset.subset(chosen["val"]) if val and chosen.get("val") else None
