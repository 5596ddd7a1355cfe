"""Every kind of bad input gets a reported skip or note (default) and a DataError naming the file (strict).

Each test writes its malformed folder into tmp_path: one good class, plus the defect under test.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fewshotseg.data.dataset import DataError
from fewshotseg.data.fss1000 import load_folder
from fewshotseg.data.images import read_image, read_mask

SIZE = 32
rng = np.random.default_rng(0)


def photo(h: int = 40, w: int = 48) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def blob(h: int = 40, w: int = 48, high: int = 255) -> np.ndarray:
    """A 0/`high` mask with a rectangle of foreground (about a quarter of the image)."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = high
    return mask


def write_pair(
    folder: Path, stem: str, image: np.ndarray | None = None, mask: np.ndarray | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo() if image is None else image).save(folder / f"{stem}.jpg")
    Image.fromarray(blob() if mask is None else mask).save(folder / f"{stem}.png")


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# Each defect: how to plant it in <root>/bad/ (returns the file the problem must name), the action, a reason
# fragment, and whether the pair "1" beside the defect still loads.
def corrupt_jpeg(d: Path) -> Path:
    write_pair(d, "1")
    (d / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 20)
    return d / "1.jpg"


def truncated_jpeg(d: Path) -> Path:
    write_pair(d, "1")
    data = jpeg_bytes(photo())
    (d / "1.jpg").write_bytes(data[: len(data) // 2])
    return d / "1.jpg"


def truncated_png(d: Path) -> Path:
    write_pair(d, "1")
    data = png_bytes(blob())
    (d / "1.png").write_bytes(data[: len(data) // 2])
    return d / "1.png"


def mask_size_mismatch(d: Path) -> Path:
    write_pair(d, "1", mask=blob(20, 24))
    return d / "1.png"


def missing_mask(d: Path) -> Path:
    write_pair(d, "1")
    (d / "1.png").unlink()
    return d / "1.jpg"


def mask_without_image(d: Path) -> Path:
    write_pair(d, "1")
    (d / "1.jpg").unlink()
    return d / "1.png"


def mask_0_7_255(d: Path) -> Path:
    mask = blob()
    mask[: mask.shape[0] // 4] = 7  # a real region of 7s, not an anti-aliased edge
    write_pair(d, "1", mask=mask)
    return d / "1.png"


def all_background(d: Path) -> Path:
    write_pair(d, "1", mask=np.zeros((40, 48), np.uint8))
    return d / "1.png"


def rgba_image(d: Path) -> Path:
    Image.fromarray(np.dstack([photo(), np.full((40, 48), 128, np.uint8)])).save(d / "1_rgba.png")
    Image.fromarray(blob()).save(d / "1_rgba_mask.png")
    return d / "1_rgba.png"


def image_16bit(d: Path) -> Path:
    Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(d / "1.png")
    Image.fromarray(blob()).save(d / "1_mask.png")
    return d / "1.png"


def mask_16bit(d: Path) -> Path:
    write_pair(d, "1", mask=blob())
    Image.fromarray(blob().astype(np.uint16) * 257).save(d / "1.png")  # 0 / 65535
    return d / "1.png"


def cmyk_image(d: Path) -> Path:
    write_pair(d, "1")
    Image.fromarray(photo()).convert("CMYK").save(d / "1.jpg")
    return d / "1.jpg"


def notes_txt(d: Path) -> Path:
    write_pair(d, "1")
    (d / "notes.txt").write_text("collected on a rainy day\n")
    return d / "notes.txt"


def stray_jpeg(d: Path) -> Path:
    write_pair(d, "1")
    Image.fromarray(photo()).save(d / "1.jpeg")
    return d / "1.jpeg"


def folder_in_class(d: Path) -> Path:
    write_pair(d, "1")
    (d / "extra").mkdir()
    return d / "extra"


DEFECTS: dict[str, tuple[Callable[[Path], Path], str, str, bool]] = {
    "corrupt JPEG": (corrupt_jpeg, "skipped", "cannot decode", False),
    "truncated JPEG": (truncated_jpeg, "skipped", "truncated", False),
    "truncated PNG": (truncated_png, "skipped", "truncated", False),
    "mask size != image size": (
        mask_size_mismatch,
        "skipped",
        "mask is 24x20 px but its image 1.jpg is 48x40",
        False,
    ),
    "missing mask": (missing_mask, "skipped", "image without a mask", False),
    "mask without image": (mask_without_image, "skipped", "mask without an image", False),
    "mask values 0/7/255": (mask_0_7_255, "skipped", "mask is not binary", False),
    "all-background mask": (all_background, "skipped", "no foreground pixels", False),
    "RGBA image": (rgba_image, "converted", "alpha channel dropped", True),
    "16-bit PNG image": (image_16bit, "converted", "16-bit", True),
    "16-bit PNG mask": (mask_16bit, "converted", "16-bit", True),
    "CMYK JPEG": (cmyk_image, "converted", "CMYK", True),
    "non-image file": (notes_txt, "skipped", "not a .jpg/.jpeg/.png", True),
    ".jpg and .jpeg with the same stem": (stray_jpeg, "skipped", "1.jpg was used", True),
    "folder inside a class folder": (folder_in_class, "skipped", "folder inside a class folder", True),
}


def plant(tmp_path: Path, defect: str) -> tuple[Path, Path]:
    """A dataset with a good class of 3 pairs and a `bad` class of 2 good pairs plus the defect."""
    root = tmp_path / "data"
    for stem in ("1", "2", "3"):
        write_pair(root / "good", stem)
    for stem in ("8", "9"):
        write_pair(root / "bad", stem)
    build = DEFECTS[defect][0]
    return root, build(root / "bad")


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_default_mode_reports_each_problem_once(
    tmp_path: Path, defect: str, caplog: pytest.LogCaptureFixture
) -> None:
    root, culprit = plant(tmp_path, defect)
    _, action, reason, pair_loads = DEFECTS[defect]
    with caplog.at_level(logging.WARNING, logger="fewshotseg.data"):
        dataset = load_folder(root, SIZE, progress=False)
    assert [(p.path, p.action) for p in dataset.problems] == [(str(culprit), action)]
    assert reason in dataset.problems[0].reason
    assert sum(str(culprit) in r.getMessage() for r in caplog.records) == 1
    assert dataset.count("bad") == 2 + pair_loads
    assert dataset.count("good") == 3
    assert set(np.unique(dataset.masks)) == {0, 1}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_strict_mode_raises_naming_the_file(tmp_path: Path, defect: str) -> None:
    root, culprit = plant(tmp_path, defect)
    with pytest.raises(DataError, match="strict") as err:
        load_folder(root, SIZE, strict=True, progress=False)
    assert str(err.value).startswith(str(culprit))


def test_truncated_images_stay_errors() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # someone flipping this would load half pictures silently


def test_empty_class_folder_is_dropped_and_reported(tmp_path: Path) -> None:
    write_pair(tmp_path / "good", "1")
    (tmp_path / "empty").mkdir()
    dataset = load_folder(tmp_path, SIZE, progress=False)
    assert dataset.names == ["good"]
    [problem] = dataset.problems
    assert (problem.path, problem.action) == (str(tmp_path / "empty"), "dropped")
    assert "empty" in problem.reason
    with pytest.raises(DataError, match="empty"):
        load_folder(tmp_path, SIZE, strict=True, progress=False)


def test_class_without_valid_pairs_is_dropped(tmp_path: Path) -> None:
    write_pair(tmp_path / "good", "1")
    write_pair(tmp_path / "broken", "1", mask=np.zeros((40, 48), np.uint8))
    dataset = load_folder(tmp_path, SIZE, progress=False)
    assert dataset.names == ["good"]
    assert [p.action for p in dataset.problems] == ["skipped", "dropped"]
    assert dataset.problems[1].path == str(tmp_path / "broken")


def test_class_names_with_quotes_load_verbatim(tmp_path: Path) -> None:
    names = ['"thors_hammer"', "abe's_flyingfish", "band-aid"]
    for name in names:
        write_pair(tmp_path / name, "1")
    dataset = load_folder(tmp_path, SIZE, progress=False)
    assert dataset.names == sorted(names)
    assert dataset.problems == []
    assert dataset.files[dataset.offsets['"thors_hammer"'][0]] == '"thors_hammer"/1.jpg'


def test_hidden_and_root_level_files_are_ignored_silently(tmp_path: Path) -> None:
    write_pair(tmp_path / "good", "1")
    (tmp_path / "splits.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "good" / "._1.jpg").write_bytes(b"\0")
    (tmp_path / ".hidden_class").mkdir()
    dataset = load_folder(tmp_path, SIZE, progress=False)
    assert dataset.names == ["good"]
    assert dataset.problems == []


def test_no_pairs_at_all_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no usable image/mask pair") as err:
        load_folder(tmp_path, SIZE, progress=False)
    assert str(tmp_path) in str(err.value)


def test_missing_root_and_single_class_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_folder(tmp_path / "nope", SIZE)
    write_pair(tmp_path, "1")
    with pytest.raises(DataError, match="pass its parent folder"):
        load_folder(tmp_path, SIZE)


# --- the mask scale rule, file by file ---------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_mask_encodings(tmp_path: Path) -> None:
    """0/1 and 0/255 masks in every container decode to the same {0, 1} mask."""
    expected = blob(high=1)
    green = np.zeros((40, 48, 3), np.uint8)
    green[..., 1] = blob()
    encodings = {
        "gray_0_255.png": blob(),
        "gray_0_1.png": blob(high=1),
        "rgb_0_1.png": np.repeat(blob(high=1)[..., None], 3, axis=2),
        "rgb_green.png": green,  # colour channels' max: a green object on black is foreground
        "rgba_0_255.png": np.dstack(
            [np.repeat(blob()[..., None], 3, axis=2), np.full((40, 48), 255, np.uint8)]
        ),
        "16bit_0_65535.png": blob().astype(np.uint16) * 257,
        "16bit_0_1.png": blob(high=1).astype(np.uint16),  # fits in 8 bits: kept, not scaled to zeros
    }
    for name, array in encodings.items():
        np.testing.assert_array_equal(read_mask(save(tmp_path / name, array)), expected, err_msg=name)
    palette = Image.frombytes("P", (48, 40), blob(high=1).tobytes())
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)  # indices {0, 1}, colours {black, white}
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), expected)


def test_antialiased_mask_is_thresholded_at_128(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:400, :400]
    disc = (((yy - 200) ** 2 + (xx - 180) ** 2) < 120**2).astype(np.uint8) * 255
    smooth = np.asarray(Image.fromarray(disc).resize((96, 96), Image.Resampling.BILINEAR))
    assert 0 < ((smooth > 0) & (smooth < 255)).mean()  # really anti-aliased
    mask = read_mask(save(tmp_path / "aa.png", smooth))
    np.testing.assert_array_equal(mask, (smooth >= 128).astype(np.uint8))


def test_label_maps_are_not_binary_masks(tmp_path: Path) -> None:
    labels = blob(high=1)
    labels[:10] = 2  # a {0, 1, 2} class map
    with pytest.raises(DataError, match="not binary") as err:
        read_mask(save(tmp_path / "labels.png", labels))
    assert str(tmp_path / "labels.png") in str(err.value)


def test_image_conversions(tmp_path: Path) -> None:
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (10, 12, 3)
    notes: list = []
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png", notes)[..., 0], gray)
    assert [n.action for n in notes] == ["converted"]
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "missing.jpg")
