"""Binary masks as the labels other tools read: COCO instances (RLE or polygons) and YOLO segmentation.

Coordinates are in pixel-edge units, COCO's convention: the top-left pixel covers [0, 1) x [0, 1), so the polygon
(0, 0), (w, 0), (w, h), (0, h) covers a whole w x h image. Polygons are the outer contours of the mask's regions:
skimage's marching squares at the 0.5 level, with the pixel corners it cuts put back and the points along straight
runs left out, so that by default (`tolerance` 0) a polygon is its region's pixel outline, corner by corner, and
rasterises back to the region exactly. A `tolerance` in px simplifies it further by Douglas-Peucker (skimage;
1 px rounds staircases into slopes: far fewer vertices to edit, small regions lose most, and it is slower). A
region's holes are filled, since neither a COCO polygon nor a YOLO row can carry one. RLE (pycocotools) is exact.

    coco_record(file, mask)      one image's record: size, RLE, polygons, area, bbox (JSON-ready)
    coco_labels_record(file, labels, K)  the same for a label map of K classes: one entry per class present
    coco_document(records, ...)  the COCO instances file: one category per class, one annotation per image and class
                                 with foreground
    merge_coco(documents)        one COCO file from several (shards of one folder), numbered as if written at once
    yolo_text(polygons, w, h)    Ultralytics' segmentation label file: one `class x1 y1 x2 y2 ...` row per region
    yolo_labels_text(labels, K)  the same for a label map: class k's regions with YOLO class id k - 1
    label_png(labels)            a label map (0 background, k class k) as a palette PNG: the index values are the
                                 classes, the colours PASCAL VOC's
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from skimage import measure

from fewshotseg.data.dataset import DataError

CATEGORY_ID = 1  # COCO's category ids start at 1; YOLO's classes at 0
YOLO_CLASS = 0


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of an (H, W) bool mask, JSON-ready: {"size": [H, W], "counts": str}."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def outer_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """The outer contour of every region of an (H, W) bool mask, each (N, 2) x, y in pixel-edge coordinates
    (N >= 3, not closed: the last point is not the first repeated): the pixel outline's corners, simplified within
    `tolerance` px when it is above 0."""
    padded = np.pad(mask.astype(np.float32), 1)  # regions touching the border get closed contours too
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        rows, cols = contour[:, 0], contour[:, 1]
        if 0.5 * np.sum(cols[:-1] * rows[1:] - cols[1:] * rows[:-1]) <= 0:
            continue  # a hole (marching squares winds holes the other way round)
        # padded pixel-centre (row, col) -> pixel-edge (x, y): -1 for the padding, +0.5 for the centre
        exact = _corners(_staircase(contour[:, ::-1] - 0.5))
        simple = measure.approximate_polygon(exact, tolerance) if tolerance > 0 else exact
        points = (simple if len(simple) >= 4 else exact)[:-1]  # a speck keeps its exact outline
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _staircase(points: np.ndarray) -> np.ndarray:
    """The pixels' own outline from a closed marching-squares contour (x, y; last point = first): its points are
    the midpoints of pixel edges, and where two consecutive ones lie on perpendicular edges the contour cuts the
    pixel corner between them; put that corner back, so the outline is exact before any simplification."""
    p, q = points[:-1], points[1:]
    p_vertical, q_vertical = p[:, 0] % 1 == 0, q[:, 0] % 1 == 0  # a vertical edge has an integer x
    corner = np.where(p_vertical[:, None], np.stack([p[:, 0], q[:, 1]], 1), np.stack([q[:, 0], p[:, 1]], 1))
    turns = p_vertical != q_vertical
    out = np.empty((len(p) + int(turns.sum()) + 1, 2))
    at = np.arange(len(p)) + np.concatenate([[0], np.cumsum(turns)[:-1]])  # where each p lands
    out[at] = p
    out[(at + 1)[turns]] = corner[turns]
    out[-1] = out[0]
    return out


def _corners(points: np.ndarray) -> np.ndarray:
    """A closed polygon (last point = first) without the points along straight runs; closed again. Its coordinates
    are multiples of 0.5, so the collinearity test is exact."""
    ring = points[:-1]
    before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    kept = ring[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]
    return np.concatenate([kept, kept[:1]]) if len(kept) else points


def _flat(points: np.ndarray, digits: int = 2) -> list[float]:
    return [round(float(v), digits) for v in points.reshape(-1)]


def coco_record(file_name: str, mask: np.ndarray, tolerance: float = 0.0,
                polygons: list[np.ndarray] | None = None) -> dict[str, Any]:
    """What the COCO file needs of one image, kept beside the outputs so a resumed run can assemble the file
    (`polygons`: the mask's `outer_polygons`, when already computed)."""
    h, w = mask.shape
    encoded = rle(mask)
    x, y, bw, bh = (round(float(v), 2) for v in coco_mask.toBbox({**encoded, "counts": encoded["counts"].encode()}))
    return {"file_name": file_name, "width": int(w), "height": int(h), "area": int(mask.sum()),
            "bbox": [x, y, bw, bh], "rle": encoded,
            "polygons": [_flat(p) for p in (outer_polygons(mask, tolerance) if polygons is None else polygons)]}


def coco_labels_record(file_name: str, labels: np.ndarray, classes: int, tolerance: float = 0.0) -> dict[str, Any]:
    """`coco_record` of a label map (H, W) with values 0..`classes`: {"file_name", "width", "height", "classes":
    {"k": class k's record (area, bbox, RLE, polygons)} for every class k present}."""
    h, w = labels.shape
    found = {}
    for k in range(1, classes + 1):
        mask = labels == k
        if mask.any():
            found[str(k)] = {key: v for key, v in coco_record(file_name, mask, tolerance).items()
                             if key not in ("file_name", "width", "height")}
    return {"file_name": file_name, "width": int(w), "height": int(h), "classes": found}


def coco_document(records: list[dict[str, Any]], category: str | list[str], *, polygons: bool = False,
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO instances file: every image, and one annotation (iscrowd 0) per image and category with foreground,
    its segmentation RLE (exact) or, with `polygons`, the outer contours (editable in labelling tools). `category`:
    the one category's name (records of `coco_record`), or the classes' names, category id k for class k (records
    of `coco_labels_record`)."""
    entries = []
    for r in records:
        image = {"file_name": r["file_name"], "width": r["width"], "height": r["height"]}
        parts = sorted(((int(k), v) for k, v in r["classes"].items())) if "classes" in r else [(CATEGORY_ID, r)]
        anns = []
        for category_id, part in parts:
            segmentation = part["polygons"] if polygons else part["rle"]
            if part["area"] > 0 and segmentation:
                anns.append({"category_id": category_id, "segmentation": segmentation, "area": part["area"],
                             "bbox": part["bbox"], "iscrowd": 0})
        entries.append((image, anns))
    names = [category] if isinstance(category, str) else list(category)
    categories = [{"id": k, "name": name, "supercategory": ""} for k, name in enumerate(names, start=CATEGORY_ID)]
    return _numbered(entries, categories, info or {})


def _numbered(entries: list[tuple[dict, list[dict]]], categories: list[dict], info: dict) -> dict[str, Any]:
    """Images in file-name order, ids from 1, annotations numbered in that order: the same whichever way the
    entries were gathered (one run, or shards merged)."""
    images, annotations = [], []
    for image, anns in sorted(entries, key=lambda e: e[0]["file_name"]):
        image_id = len(images) + 1
        images.append({"id": image_id, **{k: v for k, v in image.items() if k != "id"}})
        for ann in anns:
            rest = {k: v for k, v in ann.items() if k not in ("id", "image_id")}
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **rest})
    return {"info": info, "licenses": [], "categories": categories, "images": images, "annotations": annotations}


def merge_coco(documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One COCO file from (name, document) pairs, e.g. the shards of one folder: their categories must agree; an
    image in two of them must carry the same annotations there. Numbered as `coco_document` numbers one run."""
    if not documents:
        raise DataError("nothing to merge: give the COCO files of the shards")
    first_name, first = documents[0]
    entries: dict[str, tuple[dict, list[dict], str]] = {}
    for name, doc in documents:
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                raise DataError(f"{name}: not a COCO instances file (no {key!r} list)")
        if [(c.get("id"), c.get("name")) for c in doc["categories"]] != [
                (c.get("id"), c.get("name")) for c in first["categories"]]:
            raise DataError(f"{name} and {first_name} have different categories ({doc['categories']} vs "
                            f"{first['categories']}); merge files of one label only (predict's --label)")
        by_id: dict[Any, list[dict]] = {}
        for ann in doc["annotations"]:
            by_id.setdefault(ann.get("image_id"), []).append({k: v for k, v in ann.items()
                                                              if k not in ("id", "image_id")})
        for image in doc["images"]:
            plain = {k: v for k, v in image.items() if k != "id"}
            anns = by_id.get(image.get("id"), [])
            seen = entries.get(plain.get("file_name"))
            if seen is not None and (seen[0], seen[1]) != (plain, anns):
                raise DataError(f"{plain.get('file_name')} is in {seen[2]} and in {name} with different "
                                "annotations: merge the shards of one run (one --model, one --threshold)")
            entries[plain.get("file_name")] = (plain, anns, name)
    return _numbered([(image, anns) for image, anns, _ in entries.values()], first["categories"],
                     first.get("info", {}))


def yolo_text(polygons: list[np.ndarray], width: int, height: int, class_id: int = YOLO_CLASS) -> str:
    """Ultralytics' segmentation label file: one row per region, `class x1 y1 x2 y2 ...` with x / width and
    y / height in [0, 1]; no row (an empty file) when the mask is empty."""
    rows = []
    for points in polygons:
        xy = np.clip(points / np.array([width, height], dtype=np.float64), 0.0, 1.0)
        rows.append(" ".join([str(class_id), *(f"{v:.6f}" for v in xy.reshape(-1))]))
    return "".join(row + "\n" for row in rows)


def yolo_labels_text(labels: np.ndarray, classes: int, tolerance: float = 0.0) -> str:
    """`yolo_text` of a label map (H, W) with values 0..`classes`: class k's regions with the YOLO class id k - 1."""
    h, w = labels.shape
    return "".join(yolo_text(outer_polygons(labels == k, tolerance), w, h, class_id=k - 1)
                   for k in range(1, classes + 1))


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map, flat [r, g, b] * 256: 0 black, 1 dark red, 2 green, 3 olive, 4 navy, ..."""
    colours = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours += [r, g, b]
    return colours


def label_png(labels: np.ndarray) -> Image.Image:
    """A label map (H, W) uint8 (0 background, k class k) as a palette image whose index values are the classes."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(voc_palette())
    return image
