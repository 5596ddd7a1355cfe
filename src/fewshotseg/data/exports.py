"""Binary masks as the labels other tools read: COCO instances (RLE or polygons) and YOLO segmentation.

Coordinates are in pixel-edge units, COCO's convention: the top-left pixel covers [0, 1) x [0, 1), so the polygon
(0, 0), (w, 0), (w, h), (0, h) covers a whole w x h image. Polygons are the outer contours of the mask's regions:
skimage's marching squares at the 0.5 level, with the pixel corners it cuts put back and the points along straight
runs left out, so that by default (`tolerance` 0) a polygon is its region's pixel outline, corner by corner, and
rasterises back to the region exactly. A `tolerance` in px simplifies it further by Douglas-Peucker (skimage;
1 px rounds staircases into slopes: far fewer vertices to edit, small regions lose most, and it is slower). A
region's holes are filled, since neither a COCO polygon nor a YOLO row can carry one. RLE (pycocotools) is exact.

    coco_record(file, mask)      one image's record: size, RLE, polygons, area, bbox (JSON-ready)
    coco_document(records, ...)  the COCO instances file: one category, one annotation per image with foreground
    merge_coco(documents)        one COCO file from several (shards of one folder), numbered as if written at once
    yolo_text(polygons, w, h)    Ultralytics' segmentation label file: one `class x1 y1 x2 y2 ...` row per region
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def coco_document(records: list[dict[str, Any]], category: str, *, polygons: bool = False,
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO instances file: every image, and one annotation (category `category`, iscrowd 0) per image with
    foreground, its segmentation RLE (exact) or, with `polygons`, the outer contours (editable in labelling tools)."""
    entries = []
    for r in records:
        image = {"file_name": r["file_name"], "width": r["width"], "height": r["height"]}
        segmentation = r["polygons"] if polygons else r["rle"]
        anns = []
        if r["area"] > 0 and segmentation:
            anns.append({"category_id": CATEGORY_ID, "segmentation": segmentation, "area": r["area"],
                         "bbox": r["bbox"], "iscrowd": 0})
        entries.append((image, anns))
    categories = [{"id": CATEGORY_ID, "name": category, "supercategory": ""}]
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
