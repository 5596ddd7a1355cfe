"""The dataset spec every command's `--data` accepts, and how each kind of dataset is listed and decoded.

  DIR                   an FSS-layout folder; PASCAL VOC2012 (as pascal5i:) when DIR holds JPEGImages/ and
                        SegmentationClassAug/; COCO 2014 (as coco20i:) when it holds annotations/ and train2014/
  pascal5i:DIR          PASCAL-5i, HSNet-compatible, from a VOC2012 folder (DIR, DIR/VOC2012 or DIR/VOCdevkit/VOC2012)
  pascal5i-aug:DIR      PASCAL-5i as fewshotseg read it before: every SegmentationClassAug image, boundaries background
  coco20i:DIR           COCO-20i from a COCO 2014 folder
  fp-k:FSS_DIR,VOC_DIR  FP-k: five FSS-1000 tasks merged with their PASCAL synonyms

Options that the string cannot carry (a fold and its part, a PASCAL image list, a minimum foreground) go in a
`DataSource` built directly (`cache.load_split` does this for `--fold`); the cache keys on every field, so each
combination has its own cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fewshotseg.data import coco20i, fp_k, fss1000, pascal5i
from fewshotseg.data.dataset import DataError, SegmentationDataset
from fewshotseg.data.images import decode_pairs

KINDS = ("fss1000", "pascal5i", "pascal5i-aug", "coco20i", "fp-k")
FOLD_KINDS = ("pascal5i", "pascal5i-aug", "coco20i")  # the datasets whose classes come in folds (`--fold`)
SPEC_HELP = ("DIR (FSS-1000 layout, PASCAL VOC2012 or COCO 2014), pascal5i:DIR, pascal5i-aug:DIR, coco20i:DIR "
             "or fp-k:FSS_DIR,VOC_DIR")


@dataclass(frozen=True)
class DataSource:
    kind: str  # one of KINDS
    root: Path  # absolute; the FSS folder for fp-k
    voc_root: Path | None = None  # fp-k only
    image_list: Path | None = None  # pascal5i / fp-k: restrict PASCAL to these image ids
    min_foreground: int = 1  # pascal5i / fp-k: fewest pixels of a class for an image to join its task
    min_pairs: int = fp_k.MIN_PAIRS  # fp-k only
    # pascal5i / coco20i with a fold: which images ("train": PASCAL's trainaug or COCO's train2014; "val": the
    # VOC 2012 validation list or val2014), and the fold's own classes (held_out) or the others.
    part: str = ""
    fold: int | None = None
    held_out: bool = True
    originals: bool = False  # keep every mask at its original size too, for scoring at that size

    def describe(self) -> dict[str, str | int | None]:
        """JSON-ready fields, for the cache key and index."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _existing_dir(text: str, spec: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such folder (from --data {spec!r}); expected {SPEC_HELP}")
    return path.absolute()


def parse_spec(spec: str | Path | DataSource) -> DataSource:
    """Turn a `--data` value into a `DataSource`; unknown or missing paths are a `DataError` naming them."""
    if isinstance(spec, DataSource):
        return spec
    text = str(spec)
    for kind in ("pascal5i", "pascal5i-aug"):
        if text.startswith(kind + ":"):
            return DataSource(kind, pascal5i.find_voc_root(_existing_dir(text.removeprefix(kind + ":"), text)))
    if text.startswith("coco20i:"):
        return DataSource("coco20i", coco20i.find_coco_root(_existing_dir(text.removeprefix("coco20i:"), text)))
    if text.startswith("fp-k:"):
        fss_dir, _, voc_dir = text.removeprefix("fp-k:").partition(",")
        root = _existing_dir(fss_dir, text)
        voc = fp_k.voc_root_for_fp_k(voc_dir or None)
        return DataSource("fp-k", root, voc_root=voc)
    if ":" in text.split("/")[0] and not Path(text).exists():
        raise DataError(f"{text}: unknown dataset kind {text.split(':')[0]!r}; expected {SPEC_HELP}")
    root = _existing_dir(text, text)
    if pascal5i.is_voc_root(root):
        return DataSource("pascal5i", root)
    if coco20i.is_coco_root(root):
        return DataSource("coco20i", root)
    return DataSource("fss1000", root)


def source_files(source: DataSource) -> list[Path]:
    """Every file whose change must rebuild the cache (hidden files and the FSS root's own files excluded)."""
    if source.kind == "fss1000":
        folders = fss1000.class_folders(source.root)
    elif source.kind in ("pascal5i", "pascal5i-aug"):
        folders = [source.root / "JPEGImages", source.root / "SegmentationClassAug"]
    elif source.kind == "coco20i":
        part = source.part or "val"
        for needed in (coco20i.annotation_file(source.root, part), coco20i.image_folder(source.root, part)):
            if not needed.exists():
                raise DataError(f"{needed}: missing. {coco20i.DOWNLOAD}")
        return [coco20i.annotation_file(source.root, part), *coco20i.image_folder(source.root, part).iterdir()]
    else:
        folders = fss1000.class_folders(source.root, list(fp_k.SYNONYMS)) + [
            source.voc_root / "JPEGImages", source.voc_root / "SegmentationClassAug",
        ]  # fmt: skip
    files = [p for folder in folders for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()]
    if source.image_list is not None:
        files.append(source.image_list)
    if source.kind == "pascal5i" and source.part:
        files.append(pascal5i.val_list(source.root))
    return files


def decode_source(source: DataSource, size: int, *, strict: bool, progress: bool) -> SegmentationDataset:
    """Decode a whole dataset from its files. Nothing is reported here: `cache.load_dataset` reports once."""
    if source.kind == "fss1000":
        pairs, problems = fss1000.find_pairs(source.root)
        return decode_pairs(source.root, size, pairs, problems, strict=strict, progress=progress)
    if source.kind in ("pascal5i", "pascal5i-aug"):
        image_list, exclude_list, classes = source.image_list, None, None
        if source.part:  # a fold's train or val images (HSNet's lists)
            val = pascal5i.val_list(source.root)
            image_list, exclude_list = (val, None) if source.part == "val" else (None, val)
        if source.fold is not None:
            fold = source.fold
            classes = pascal5i.fold_classes(fold) if source.held_out else pascal5i.training_classes(fold)
        pairs, problems = pascal5i.find_pairs(
            source.root, image_list=image_list, exclude_list=exclude_list, classes=classes,
            min_foreground=source.min_foreground, ignore_boundary=source.kind == "pascal5i", progress=progress,
        )  # fmt: skip
        return decode_pairs(source.root, size, pairs, problems, strict=strict, progress=progress,
                            originals=source.originals)
    if source.kind == "coco20i":
        pairs, problems = coco20i.find_pairs(source.root, source.part or "val", fold=source.fold,
                                             held_out=source.held_out, min_foreground=source.min_foreground)
        return decode_pairs(source.root, size, pairs, problems, strict=strict, progress=progress,
                            originals=source.originals)
    if source.kind == "fp-k":
        pairs, problems = fp_k.find_pairs(
            source.root, source.voc_root, image_list=source.image_list, min_foreground=source.min_foreground,
            progress=progress,
        )  # fmt: skip
        root = fp_k.common_root(source.root, source.voc_root)
        return decode_pairs(root, size, pairs, problems, strict=strict, progress=progress)
    raise DataError(f"unknown dataset kind {source.kind!r}; expected one of {', '.join(KINDS)}")
