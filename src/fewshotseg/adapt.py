"""`fewshotseg adapt`: adapt an initialization to a user's labelled images and segment new ones.

    support folder (image + mask pairs) --U--> adapted network --> for every query image:
        <out>/<name>_mask.png     binary mask (0/255) at the query image's own (upright) size
        <out>/<name>_overlay.png  the query with the predicted foreground tinted red
    <out>/adapt.json (what was done), optionally <out>/adapted/ (weights + card, `--save-weights`) and
    <out>/adapted.onnx (image in [0, 1] -> foreground probability, any batch size).

A support folder of several classes (`data.folder.multiclass_folder`: indexed masks with classes.txt, or one mask
per class `name.<class>.png`) is adapted with `MultiClassSegmenter` (`--strategy`), and for every query:
        <out>/<name>_mask.png          indexed palette PNG: 0 background, k class k (<out>/classes.txt names them)
        <out>/<name>_<class>_mask.png  each class's binary mask (0/255); no two overlap
        <out>/<name>_overlay.png       the query with each class tinted in its palette colour

A thin layer over `FewShotSegmenter`: files in, files out. The initialization defaults to the shipped `general` one
and U to the initialization's own update parameters for the number of support pairs (`--u-preset paper`: the
paper's Table 3; `--update-params FILE`: a `tune` result; `--u-lr` etc. override single values).

Nothing the user had is overwritten: `--out` may not be the support or query folder, no output may land on an input
file, and a folder holding an earlier `adapt` result (or files of the names adapt writes) needs `--overwrite`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fewshotseg.adaptation import METHODS
from fewshotseg.config import SIZE, option
from fewshotseg.data.dataset import DataError, Problem
from fewshotseg.data.images import load_image
from fewshotseg.errors import UserError
from fewshotseg.initializations.adapting import U_PRESETS
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.multiclass import STRATEGIES
from fewshotseg.segmenter import STATS, with_stats

log = logging.getLogger(__name__)

CLASSES_TXT = "classes.txt"  # beside a multi-class result: line k names value k of the indexed masks


@dataclass
class AdaptConfig(ModelFields):
    init: str = option("general", "initialization: general (shipped), a folder with card.json, a run folder or "
                                  "model.safetensors, imagenet or random")
    support: str = option("", "folder of labelled pairs: name.jpg + name_mask.png, or FSS-style 1.jpg + 1.png; "
                              "several classes: indexed masks with classes.txt, or name.jpg + name.<class>.png",
                          required=True)
    query: str = option("", "folder of images to segment (or one image)", required=True)
    out: str = option("", "output folder for masks, overlays and optional weights", required=True)
    update_params: str = option("", "U's hyperparameters from a file (`tune`'s update_params.json); default: the "
                                    "initialization's own (its card)")
    u_preset: str = option("card", "where U's hyperparameters come from when no file is given: card (the "
                                   "initialization's own) or paper (Table 3)", choices=U_PRESETS)
    method: str = option("card", "adaptation method: card (the initialization's own), finetune (U), probe (linear "
                                 "head on frozen features), prototype or rf (random-forest pixel classifier)",
                         choices=("card", *METHODS))
    method_settings: str = option("", "the method's settings from a file (`tune --method`'s method.json or a "
                                      "YAML/JSON mapping); default: the card's for that method, else its defaults")
    stats: str = option("card", "BatchNorm statistics at prediction when fine-tuning: card (U's own regime, as "
                                "tuned), support (recomputed from the support images; each query independent), "
                                "query-batch or running", choices=STATS)
    size: int = option(0, "network input size (0: the initialization's own, from its card)", **SIZE, or_zero=True)
    threshold: float = option(0.5, "foreground probability threshold")
    save_weights: bool = option(False, "also write the fitted segmenter (weights, fitted head, card) to "
                                       "<out>/adapted/, loadable with FewShotSegmenter.from_pretrained")
    onnx: bool = option(False, "also export the adapted network to adapted.onnx")
    overwrite: bool = option(False, "replace the results of an earlier adapt in --out")
    strategy: str = option("auto", "several classes: auto (the measured default for the probe, else one-vs-rest), "
                                   "one-vs-rest (one adapted segmenter per class) or joint (one softmax head; probe)",
                           choices=STRATEGIES)
    seed: int = option(0, "seed of U's augmentation and batching")
    device: str = option("auto", "cpu, cuda or auto")


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with foreground pixels tinted red (paper Fig. 2)."""
    out = image.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    return out.round().astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each class's pixels (labels (H, W): 0 background, k class k) tinted in class k's colour of
    PASCAL VOC's palette, the colours of the indexed mask PNGs (`data.exports.voc_palette`)."""
    from fewshotseg.data.exports import voc_palette

    colours = np.asarray(voc_palette(), np.float32).reshape(256, 3)
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[labels[fg]]
    return out.round().astype(np.uint8)


class Probabilities(torch.nn.Module):
    """The exported graph: image batch in [0, 1] -> foreground probability (B, H, W)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)[:, 1]


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> None:
    wrapper = Probabilities(model).eval()
    example = torch.rand(1, 3, size, size)
    with warnings.catch_warnings():  # the tracer's notes on timm's shape arithmetic (the export is checked in tests)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"], output_names=["foreground"],
                          dynamic_axes={"image": {0: "batch"}, "foreground": {0: "batch"}}, dynamo=False)


def _outputs(out: Path, queries: list[Path], cfg: AdaptConfig, classes: list[str] | None = None) -> list[Path]:
    names = [out / "adapt.json"] + [out / f"{q.stem}_{kind}.png" for q in queries for kind in ("mask", "overlay")]
    if classes:
        names += [out / CLASSES_TXT] + [out / f"{q.stem}_{c}_mask.png" for q in queries for c in classes]
    if cfg.onnx:
        names.append(out / "adapted.onnx")
    if cfg.save_weights:
        names.append(out / "adapted")
    return names


def earlier_outputs(out: Path) -> list[Path]:
    """The masks, overlays and classes.txt that an earlier adapt recorded writing in `out` (its adapt.json); [] when
    there is none or it cannot be read."""
    try:
        earlier = json.loads((out / "adapt.json").read_text())
        stems = [Path(str(q["mask"])).name.removesuffix("_mask.png") for q in earlier["queries"]]
        classes = [str(c) for c in earlier.get("classes") or []]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    names = [f"{s}_{kind}.png" for s in stems for kind in ("mask", "overlay")]
    names += [f"{s}_{c}_mask.png" for s in stems for c in classes] + ([CLASSES_TXT] if classes else [])
    return [out / n for n in names]


def clear_earlier(out: Path, planned: list[Path], progress) -> None:
    """With --overwrite: remove what the earlier adapt in `out` wrote and this run will not write again, so that the
    folder holds this run's results only (its adapt.json lists them); nothing else in `out` is touched."""
    keep = {p.resolve() for p in planned}
    stale = [p for p in earlier_outputs(out) if p.is_file() and p.resolve() not in keep]
    for p in stale:
        p.unlink()
    if stale:
        shown = ", ".join(p.name for p in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        progress(f"--overwrite: removed {len(stale)} file(s) of the earlier adapt in {out} that this run does not "
                 f"write again ({shown})")


def check_out(out: Path, support: Path, query: Path, inputs: list[Path], queries: list[Path], cfg: AdaptConfig,
              classes: list[str] | None = None) -> None:
    """Refuse an --out that would overwrite the user's files (see the module docstring)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; --out is the folder the masks and overlays are written to: choose a "
                        "folder (it is made if missing)")
    resolved = out.resolve()
    for what, folder in (("support", support), ("query", query)):
        f = folder.resolve()
        if resolved == f or (f.is_file() and resolved == f.parent):
            raise UserError(f"--out {out} is the {what} folder; masks would be written among your {what} images "
                            "(and could replace your labelled masks): choose another --out")
    stems: dict[str, Path] = {}
    for q in queries:
        if q.stem in stems:
            raise UserError(f"queries {stems[q.stem]} and {q} share the name {q.stem!r}; their masks would overwrite "
                            "each other: rename one")
        stems[q.stem] = q
    inputs_resolved = {p.resolve() for p in inputs}
    planned = _outputs(out, queries, cfg, classes)
    clash = [p for p in planned if p.resolve() in inputs_resolved]
    if clash:
        raise UserError(f"--out {out}: writing {clash[0].name} would overwrite the input file {clash[0]}; choose "
                        "another --out")
    existing = [p for p in planned if p.exists()]
    if existing and not cfg.overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise UserError(f"--out {out} already holds {len(existing)} file(s) adapt would write ({shown}); pass "
                        "--overwrite to replace them, or choose another --out")


def read_support(folder: Path) -> tuple[list[tuple[np.ndarray, np.ndarray, str]], list[Problem], list[Path]]:
    """((upright image, mask, name) per readable pair, problems, every input file) of a support folder."""
    from fewshotseg.data.folder import LAYOUTS, pair_folder
    from fewshotseg.data.fss1000 import pair_class_folder
    from fewshotseg.data.images import IMAGE_SUFFIXES, BadFile, read_pair, report_problems

    folder = pair_folder(folder)
    inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(inside) > 1 and not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        shown = ", ".join(inside[:5]) + (f" and {len(inside) - 5} more" if len(inside) > 5 else "")
        raise DataError(f"--support {folder}: it holds {len(inside)} folders ({shown}) and no image of its own; pass "
                        "one of them, the labelled examples of one kind of object (for several kinds at once, one "
                        "folder whose masks name each object: see the README's 'Several objects at once')")
    pairs, problems = pair_class_folder(folder)
    files = [f for pair in pairs for f in (pair.image, pair.mask)]  # the pairs' paths already hold the folder
    good = []
    for pair in pairs:
        image, mask = pair.image, pair.mask
        try:
            rgb, m = read_pair(image, mask, str(image))
        except BadFile as err:  # the file at fault and the reason, each said once
            problems.append(Problem(err.path, err.reason, "skipped"))
            continue
        except DataError as err:
            problems.append(Problem(str(image), str(err), "skipped"))
            continue
        good.append((rgb, m, str(image)))
    report_problems(problems)
    if not good:
        found = "".join(f"\n  {p}" for p in problems[:10])
        raise DataError(f"{folder}: no usable support image/mask pair; expected {LAYOUTS}.{found}")
    return good, problems, files


QUERY_BATCH = 8  # queries predicted together when their masks do not depend on each other


def update_params(seg, spec, spec_source: str, shots: int, cfg: AdaptConfig, u_overrides: dict[str, Any],
                  progress) -> tuple[Any, str]:
    """U's parameters and where they came from when `spec` fine-tunes ((None, "") otherwise, where --update-params
    and --u-* are refused); prints what adapts."""
    if spec.method != "finetune":
        given = [flag for flag, on in (("--update-params", bool(cfg.update_params)),
                                       (f"--u-preset {cfg.u_preset}", cfg.u_preset != "card"),
                                       (f"--stats {cfg.stats}", cfg.stats != "card")) if on]
        given += [f"--u-{k.replace('_', '-')}" for k, v in u_overrides.items() if v is not None]
        if given:
            frozen = (f" (the {spec.method}'s own BatchNorm statistics are its `stats` setting: running or support, "
                      "in --method-settings)" if spec.method in ("probe", "prototype") else "")
            raise UserError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} U's fine-tuning, but the method "
                            f"is {spec.method} (from {spec_source}); pass --method finetune to fine-tune, or drop "
                            f"{'it' if len(given) == 1 else 'them'}{frozen}")
        progress(f"method: {spec.describe()} — from {spec_source}")
        return None, ""
    params, source = seg.update_params_for(shots, preset=cfg.u_preset, file=cfg.update_params or None, **u_overrides)
    params = with_stats(params, cfg.stats)
    progress(f"U: lr {params.lr:g}, {params.steps} steps, batch {params.batch_size}, {params.optimizer}, "
             f"BatchNorm {params.bn_policy} — from {source}")
    return params, source


def predicted(queries: list[Path], predict, threshold: float, together: bool, failed: list[str]):
    """(path, upright image, prediction) of every readable query; an unreadable one is added to `failed`. Each
    query's mask is its own (support statistics, per-image self-training), so queries are predicted QUERY_BATCH at
    a time, for speed with bounded memory; `together` (a transductive U) normalises the whole set at once."""
    pending: list[tuple[Path, np.ndarray]] = []
    for n, path in enumerate(queries):
        try:
            pending.append((path, load_image(path, str(path))))
        except DataError as err:
            failed.append(str(err))
        if pending and (n == len(queries) - 1 or (not together and len(pending) == QUERY_BATCH)):
            preds = predict([rgb for _, rgb in pending], threshold=threshold)
            yield from ((path, rgb, pred) for (path, rgb), pred in zip(pending, preds, strict=True))
            pending = []


def save_each(predictions: Iterable[tuple], save: Callable[..., None]) -> None:
    """`save(*item)` for each item of `predictions`, on one writer thread, in order: encoding the PNGs (zlib releases
    the GIL) runs beside the next batch's prediction. A failed save stops the loop at the next item and is raised."""
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        for item in predictions:
            while pending and pending[0].done():
                pending.pop(0).result()
            pending.append(writer.submit(save, *item))
    for future in pending:
        future.result()


def adapt(cfg: AdaptConfig, *, u_overrides: dict[str, Any] | None = None, progress=print) -> dict[str, Any]:
    """Adapt and segment (see the module docstring); `u_overrides` replace single fields of U (`--u-lr` ...)."""
    from fewshotseg.data.folder import list_queries, multiclass_folder, skipped_queries
    from fewshotseg.segmenter import FewShotSegmenter

    try:
        queries = list_queries(cfg.query)
    except DataError as err:
        raise DataError(f"--query {err}") from None
    skipped = skipped_queries(cfg.query)  # reported with the results, never silently left out
    several = multiclass_folder(cfg.support)
    if several is not None:
        return adapt_classes(cfg, several, queries, skipped, u_overrides or {}, progress)
    if cfg.strategy != "auto":
        raise UserError(f"--strategy {cfg.strategy} chooses how several classes are adapted, but {cfg.support} holds "
                        "one kind of object (no classes.txt, no name.<class>.png masks); drop --strategy")
    support, problems, support_files = read_support(Path(cfg.support))
    out = Path(cfg.out)
    check_out(out, Path(cfg.support), Path(cfg.query), support_files + queries, queries, cfg)

    seg = FewShotSegmenter.from_pretrained(cfg.init, device=cfg.device, size=cfg.size,
                                           model_config=cfg.model_config())
    spec, spec_source = seg.method_for(cfg.method, file=cfg.method_settings or None)
    if spec.method != "finetune" and cfg.onnx:
        raise UserError(f"--onnx exports a fine-tuned network; the {spec.method} method keeps the initialization "
                        "frozen: pass --method finetune to export one (or --save-weights to keep this fit)")
    if spec.method == "rf" and cfg.save_weights:
        raise UserError("--save-weights with --method rf: a random forest can only be stored with pickle, which "
                        "fewshotseg never loads; keep the support pairs and run adapt again")
    progress(f"adapting {seg.described} to {len(support)} support pair(s) at {seg.size} px")
    params, source = update_params(seg, spec, spec_source, len(support), cfg, u_overrides or {}, progress)
    images, masks, names = zip(*support, strict=True)
    seg.fit(list(images), list(masks), seed=cfg.seed, update_params=params, names=list(names), method=spec)
    seg.params_source = source
    together = params is not None and params.bn_policy == "transductive"  # the query batch normalises itself

    if cfg.overwrite:
        clear_earlier(out, _outputs(out, queries, cfg), progress)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    failed: list[str] = []
    save_each(predicted(queries, seg.predict, cfg.threshold, together, failed),
              lambda path, rgb, pred: _save(path, rgb, pred.mask, out, written))
    if cfg.save_weights:
        seg.save_pretrained(out / "adapted")
    if cfg.onnx:
        export_onnx(seg.model.cpu(), seg.size, out / "adapted.onnx")
    summary = {"init": seg.described, "size": seg.size, "support_pairs": len(support),
               "support_problems": len(problems), "method": spec.as_dict(), "method_source": spec_source,
               "update_params": params.as_dict() if params is not None else None,
               "update_params_source": source,
               "bn_policy": params.bn_policy if params is not None else spec.as_dict()["settings"].get("stats"),
               "seed": cfg.seed, "queries": written,
               "failed": failed}
    summary["skipped"] = skipped
    (out / "adapt.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _save(path: Path, rgb: np.ndarray, mask: np.ndarray, out: Path, written: list) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_mask.png")
    Image.fromarray(overlay(rgb, mask)).save(out / f"{path.stem}_overlay.png")
    written.append({"query": str(path), "mask": str(out / f"{path.stem}_mask.png"),
                    "foreground_fraction": float(mask.mean())})


# ------------------------------------------------------------------------------------------ several classes


def readable_pairs(found) -> tuple[list[Problem], list[int]]:
    """(problems, indices of the pairs whose files all decode) of a `MultiClassFolder`: a corrupt or unreadable
    image or mask is skipped and reported, as in a one-class folder; wrong values are `fit`'s to refuse."""
    from fewshotseg.data.images import BadFile, read_image

    problems, keep = [], []
    for i, image in enumerate(found.images):
        masks = ([ms[i] for ms in found.masks.values() if ms[i] is not None] if isinstance(found.masks, dict)
                 else [found.masks[i]])
        try:
            for path in (image, *masks):
                if path == image:
                    read_image(path)
                else:
                    with Image.open(path) as im:
                        im.load()
        except BadFile as err:
            problems.append(Problem(err.path, err.reason, "skipped"))
            continue
        except OSError as err:
            problems.append(Problem(str(path), f"cannot decode it ({err}); re-export it or delete the pair", "skipped"))
            continue
        keep.append(i)
    return problems, keep


def adapt_classes(cfg: AdaptConfig, found, queries: list[Path], skipped: list[str], u_overrides: dict[str, Any],
                  progress) -> dict[str, Any]:
    """`adapt` on a support folder of several classes (see the module docstring)."""
    from fewshotseg.data.exports import label_png
    from fewshotseg.data.images import report_problems
    from fewshotseg.multiclass import MultiClassSegmenter

    problems, keep = readable_pairs(found)
    report_problems(problems)
    if not keep:
        shown = "".join(f"\n  {p}" for p in problems[:10])
        raise DataError(f"{cfg.support}: no usable support image among {len(found.images)}.{shown}")
    images = [found.images[i] for i in keep]
    masks = ({c: [ms[i] for i in keep] for c, ms in found.masks.items()} if isinstance(found.masks, dict)
             else [found.masks[i] for i in keep])
    classes = list(found.classes.values())
    out = Path(cfg.out)
    check_out(out, Path(cfg.support), Path(cfg.query), found.files + queries, queries, cfg, classes)
    if cfg.onnx:
        raise UserError("--onnx exports the one network of a one-class segmenter; a support folder of several "
                        "classes gives one per class (or a joint head): use --save-weights and fewshotseg predict")
    seg = MultiClassSegmenter.from_pretrained(cfg.init, device=cfg.device, size=cfg.size,
                                              model_config=cfg.model_config())
    spec, spec_source = seg.base.method_for(cfg.method, file=cfg.method_settings or None)
    if spec.method == "rf" and cfg.save_weights:
        raise UserError("--save-weights with --method rf: a random forest can only be stored with pickle, which "
                        "fewshotseg never loads; keep the support pairs and run adapt again")
    progress(f"adapting {seg.base.described} to {len(images)} support image(s) of {len(classes)} classes "
             f"({', '.join(classes)}; {found.layout} masks) at {seg.size} px")
    params, source = update_params(seg.base, spec, spec_source, len(images), cfg, u_overrides, progress)
    seg.fit(images, masks, found.classes, strategy=cfg.strategy, method=spec, update_params=params, seed=cfg.seed,
            names=[str(p) for p in images])
    progress(f"strategy: {seg.strategy}" + (" (the measured default)" if cfg.strategy == "auto" else ""))
    together = params is not None and params.bn_policy == "transductive"

    if cfg.overwrite:
        clear_earlier(out, _outputs(out, queries, cfg, seg.classes), progress)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    failed: list[str] = []

    def save(path: Path, rgb: np.ndarray, pred) -> None:
        label_png(pred.labels).save(out / f"{path.stem}_mask.png")
        Image.fromarray(label_overlay(rgb, pred.labels)).save(out / f"{path.stem}_overlay.png")
        for name, mask in pred.masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_{name}_mask.png")
        written.append({"query": str(path), "mask": str(out / f"{path.stem}_mask.png"),
                        "foreground_fraction": {c: float(m.mean()) for c, m in pred.masks.items()},
                        "contested_pixels": pred.contested})

    save_each(predicted(queries, seg.predict, cfg.threshold, together, failed), save)
    (out / CLASSES_TXT).write_text("".join(f"{c}\n" for c in seg.classes))
    if cfg.save_weights:
        seg.save_pretrained(out / "adapted")
    summary = {"init": seg.base.described, "size": seg.size, "support_pairs": len(images),
               "support_problems": len(problems) + len(found.problems), "classes": seg.classes,
               "layout": found.layout, "strategy": seg.strategy, "method": spec.as_dict(),
               "method_source": spec_source, "update_params": params.as_dict() if params is not None else None,
               "update_params_source": source, "seed": cfg.seed, "threshold": cfg.threshold,
               "overlaps": "a pixel claimed by several classes goes to the most probable one",
               "contested_pixels": sum(q["contested_pixels"] for q in written), "queries": written,
               "failed": failed, "skipped": skipped}
    (out / "adapt.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
