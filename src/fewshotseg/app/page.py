"""`fewshotseg serve`: the web page over `Workspace`, built with Gradio (the `app` extra).

One page, four steps: support images with a mask each (uploaded, or painted with a brush and an eraser on the
image), the initialization and its update parameters, then Adapt -> query overlays and downloads, then any
prediction corrected in a second editor and added to the support set for the next Adapt. With two or more names in
*Objects*, the same steps segment several objects at once: *Object to paint* chooses the object the editors paint,
Adapt fits a `MultiClassSegmenter`, and the overlays show every object in its colour (`Workspace` holds the logic).

Sessions: each browser tab gets its own `Workspace` (in a `gr.State`, so two users never share images, masks or
weights), whose temporary folder is removed when the tab closes (`demo.unload`) or, at the latest, when Gradio
expires the state (its `delete_callback`). Work that runs the network (Adapt, Segment, ONNX) goes through one queue
with `concurrency` slots (one by default: one adaptation at a time on a small CPU budget); waiting pages see their
position in it. Gradio's copy of an upload is deleted as soon as the workspace has copied it. Every handler turns a `UserError` into a message in the page; any other exception is logged and shown
as a one-line internal error, and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from fewshotseg.app.workspace import DEFAULT_CLASS, IMAGE_SUFFIXES, Initialization, Limits, Workspace
from fewshotseg.errors import UserError

log = logging.getLogger(__name__)

WORK = "network"  # the concurrency id shared by every event that runs the network
INTRO = """# fewshotseg — segment your own images
1. **Support images**: upload a few photos of the object. Pick each in *Image to label* and either paint the object
   with the brush (then *Use painted mask*) or upload its mask.
2. **Initialization and update parameters**: the defaults are the initialization's own for this many pairs.
3. **Adapt**: adapts the initialization to your pairs by its method (the shipped `general`: a linear probe on frozen
   features, no fine-tuning; *Method* says otherwise) and segments the query images; download the masks, the adapted
   weights or (fine-tuned networks) an ONNX export.
4. **Correct**: open a prediction in the correction editor (pick it, or click its overlay), paint what it missed
   with the red brush and what it wrongly took with the blue one, *Add to support*, and Adapt again: the counter
   shows how much each correction changed.

Several objects: type their names in *Objects* (`duck, cat`), *Set objects*, and paint each one, chosen in *Object to
paint*, on the images that show it."""


class Sessions:
    """Every open session's workspace, so that a closing tab removes its folder at once (`demo.unload`)."""

    def __init__(self, root: Path, limits: Limits):
        self.root, self.limits = root, limits
        self.by_hash: dict[str, Workspace] = {}
        self.lock = threading.Lock()

    def get(self, ws: Workspace | None, request: gr.Request | None) -> Workspace:
        if ws is not None and not ws.closed:
            return ws
        ws = Workspace(self.root, self.limits)
        key = getattr(request, "session_hash", None)
        if key:
            with self.lock:
                old = self.by_hash.pop(key, None)
                self.by_hash[key] = ws
            if old is not None and old is not ws:
                old.close()
        return ws

    def end(self, request: gr.Request) -> None:
        with self.lock:
            ws = self.by_hash.pop(getattr(request, "session_hash", None) or "", None)
        if ws is not None:
            ws.close()

    def close_all(self) -> None:
        with self.lock:
            open_ones, self.by_hash = list(self.by_hash.values()), {}
        for ws in open_ones:
            ws.close()


def shown(fn):
    """Run a handler under its session's lock; a UserError becomes a message in the page (gr.Error), anything else
    a logged one-line internal error: no input crashes the server."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as err:
            raise gr.Error(str(err), duration=None) from None
        except Exception as err:
            log.exception("internal error in %s", fn.__name__)
            raise gr.Error(f"internal error ({type(err).__name__}: {str(err)[:200]}); the server log has the "
                           "details", duration=None) from None
    return wrapper


def _paths(files) -> list[str]:
    if files is None:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]


def _consume(paths: list[str]) -> None:
    """Delete Gradio's copies of uploads (in its upload folder only) once the session's folder holds its own."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    for p in paths:
        if is_in_or_equal(p, get_upload_folder()):
            Path(p).unlink(missing_ok=True)


def _queries_text(ws: Workspace) -> str:
    names = [q.name for q in ws.queries]
    return f"{len(names)} query image(s) ready: {', '.join(names)}" if names else "no query image yet"


def _pairs_text(ws: Workspace) -> str:
    done = ws.labelled()
    if not ws.support:
        return "**0 labelled pairs** — upload support images"
    lines = [f"**{len(done)} labelled pair{'s' if len(done) != 1 else ''}** of {len(ws.support)} support image(s)"]
    lines += [f"- {p.name}: {_mask_text(p, ws.multiclass)}" for p in ws.support]
    return "\n".join(lines)


def _mask_text(p, several: bool = False) -> str:
    if p.mask is None:
        return "no mask yet"
    objects = f" ({', '.join(p.masks)})" if several else ""
    if p.changed is not None:
        return f"corrected prediction{objects} ({_percent(p.changed)} of pixels changed)"
    return f"{p.mask_source} mask{objects}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def corrections_text(ws: Workspace) -> str:
    """'N corrected: a %, b %, ... of pixels changed', in the order corrected: shares that shrink mean the adapted
    network's masks need less and less correction."""
    done = ws.corrections()
    if not done:
        return "no prediction corrected yet"
    return f"**{len(done)} corrected**: {', '.join(_percent(c) for _, c in done)} of pixels changed"


def _support_gallery(ws: Workspace):
    from fewshotseg.adapt import label_overlay, overlay

    if ws.multiclass:
        return [(label_overlay(p.rgb, p.labels(ws.classes)), f"{p.name} ({p.mask_source})") for p in ws.labelled()]
    return [(overlay(p.rgb, p.mask), f"{p.name} ({p.mask_source})") for p in ws.labelled()]


def _chosen(ws: Workspace, cls: str | None) -> str | None:
    """The object the editors paint: the one chosen in Object to paint (None, the only one, with one object)."""
    return cls if ws.multiclass and cls in ws.classes else None


def _others(ws: Workspace | None, p, cls: str | None) -> np.ndarray:
    """The image with every object but `cls` tinted in its colour (the image itself with one object)."""
    from fewshotseg.adapt import label_overlay

    if ws is None or cls is None:
        return p.rgb
    labels = p.labels(ws.classes)
    labels[labels == ws.classes.index(cls) + 1] = 0
    return label_overlay(p.rgb, labels)


def _editor_value(ws: Workspace, name: str | None, cls: str | None = None):
    """The chosen image as the editor's background, with its current mask (of the object `cls`, with several) as a
    red layer; the other objects are tinted in their colours on the background."""
    if not name or name not in {p.name for p in ws.support}:
        return None
    p = ws.pair(name)
    cls = _chosen(ws, cls)
    mask = p.mask if cls is None else p.masks.get(cls)
    layer = np.zeros((*p.rgb.shape[:2], 4), np.uint8)
    if mask is not None:
        layer[mask] = (255, 0, 0, 150)  # translucent: the object shows through
    return {"background": _others(ws, p, cls), "layers": [layer], "composite": None}


def painted_mask(value) -> np.ndarray:
    """(H, W) bool of what was painted (brush strokes left after erasing) in the editor's layers."""
    layers = [np.asarray(x) for x in (value or {}).get("layers") or [] if x is not None]
    if not layers:
        raise UserError("nothing painted: pick a support image, choose the brush and paint over the object")
    mask = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        if layer.shape[:2] == mask.shape:
            mask |= layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(*mask.shape, -1).any(2)
    return mask


def _prediction_value(query, ws: Workspace | None = None, cls: str | None = None) -> dict:
    """A predicted query for the correction editor: its prediction tinted red on the image, no strokes yet. With
    several objects (`ws`, `cls`), the prediction of the object `cls`, the others tinted in their colours."""
    from fewshotseg.adapt import overlay

    cls = _chosen(ws, cls) if ws is not None else None
    return {"background": overlay(_others(ws, query, cls), _predicted(query, cls)), "layers": [], "composite": None}


def _predicted(query, cls: str | None = None) -> np.ndarray:
    """(H, W) bool of a predicted query's object, or of the object `cls` with several (all background when nothing
    was predicted)."""
    mask = query.mask if cls is None else query.masks.get(cls)
    return mask if mask is not None else np.zeros(query.rgb.shape[:2], bool)


def legend(ws: Workspace) -> str:
    """With several objects: each object's colour in the overlays, and each query's contested pixels."""
    if not ws.multiclass:
        return ""
    from fewshotseg.data.exports import voc_palette

    palette = voc_palette()
    swatches = []
    for k, cls in enumerate(ws.classes, start=1):
        colour = "#{:02x}{:02x}{:02x}".format(*palette[3 * k: 3 * k + 3])
        swatches.append(f'<span style="color:{colour}">■</span> **{cls}** ({colour})')
    text = "Objects: " + " · ".join(swatches)
    if ws.results:
        text += ("  \nContested pixels (claimed by two objects, given to the most probable): "
                 + ", ".join(f"{n} {ws.contested.get(n, 0)}" for n, _, _ in ws.results))
    return text


def corrected_mask(value, predicted: np.ndarray) -> np.ndarray:
    """The prediction ((H, W) bool) with the correction editor's strokes applied: red strokes add to the object,
    blue strokes remove from it, and what the eraser took back is the prediction again.

    The prediction is the editor's background, not a layer: Gradio's editor (6.x) does not reliably keep a layer
    it is given editable (it can shift it by the canvas margin, or make a second, empty layer the one the eraser
    acts on), while strokes always land in the layer the editor itself made."""
    if not value or value.get("background") is None:
        raise UserError("open a prediction in the correction editor first: pick it in the list or click its overlay")
    h, w = predicted.shape
    mask = predicted.copy()
    for layer in (np.asarray(x) for x in value.get("layers") or [] if x is not None):
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue
        if layer.shape[:2] != (h, w):  # the canvas had another size: strokes are read on the image's grid
            layer = np.asarray(Image.fromarray(layer).resize((w, h), Image.NEAREST))
        stroke = layer[..., 3] > 0
        red, blue = layer[..., 0].astype(int), layer[..., 2].astype(int)  # where strokes overlap, the top one
        mask |= stroke & (red >= blue)
        mask &= ~(stroke & (blue > red))
    return mask


OBJECT, NOT_OBJECT = "#ff0000", "#0000ff"  # the correction editor's brush colours


def mask_editor(label: str, elem_id: str, colors: tuple[str, ...] = (OBJECT,)) -> gr.ImageEditor:
    """An editor with translucent brushes and an eraser over an image the page sets (no uploads of its own).

    The canvas starts at 1x1 px so that it takes each image's own size: from a larger starting canvas Gradio
    (6.x) places a layer given with the image off by the margin between the two."""
    return gr.ImageEditor(label=label, sources=(), type="numpy", image_mode="RGBA", format="png", layers=False,
                          transforms=(), brush=gr.Brush(colors=[(c, 0.6) for c in colors], default_color=colors[0],
                                                        color_mode="fixed"),
                          eraser=gr.Eraser(), canvas_size=(1, 1), elem_id=elem_id)


METHOD_CHOICES = [("the initialization's own (its card)", "card"), ("fine-tune with U", "finetune"),
                  ("linear probe on frozen features", "probe"), ("prototype (cosine)", "prototype"),
                  ("random-forest pixel classifier", "rf")]
STRATEGY_CHOICES = [("measured default (joint for the probe)", "auto"), ("one segmenter per object", "one-vs-rest"),
                    ("one head for all objects (probe)", "joint")]


def build_page(inits: list[Initialization], limits: Limits, root: Path, *, concurrency: int = 1,
               method0: str = "card") -> gr.Blocks:
    """The page over `inits` (the first is the default); each session's files live under `root`; `method0` is the
    method the Method control starts at (`serve --method`)."""
    sessions = Sessions(root, limits)
    by_label = {i.label: i for i in inits}
    lr0, steps0, source0 = inits[0].default_params(1)
    types = list(IMAGE_SUFFIXES)

    with gr.Blocks(title="fewshotseg", delete_cache=(600, 3600)) as demo:
        state = gr.State(None, delete_callback=lambda ws: ws.close() if ws is not None else None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("### 1. Support images")
                with gr.Row():
                    objects = gr.Textbox(label="Objects (names separated by commas; two or more: several at once)",
                                         value=DEFAULT_CLASS, elem_id="objects", scale=3)
                    set_objects = gr.Button("Set objects", size="sm", elem_id="set-objects", scale=1)
                support_files = gr.File(label="Support images (several)", file_count="multiple", file_types=types,
                                        elem_id="support-files")
                with gr.Row():
                    pick = gr.Dropdown(label="Image to label", choices=[], value=None, interactive=True,
                                       elem_id="pick")
                    remove = gr.Button("Remove this image", size="sm", elem_id="remove")
                    paint_class = gr.Dropdown(label="Object to paint", choices=[DEFAULT_CLASS], value=DEFAULT_CLASS,
                                              interactive=True, visible=False, elem_id="paint-class")
                editor = mask_editor("Paint the object (brush) — erase mistakes (eraser)", "editor")
                with gr.Row():
                    use_painted = gr.Button("Use painted mask", elem_id="use-painted")
                    mask_file = gr.File(label="…or upload its mask (PNG at the image's size)", file_types=types,
                                        elem_id="mask-file", height=130)
                pairs_md = gr.Markdown("**0 labelled pairs** — upload support images", elem_id="pairs")
                support_gallery = gr.Gallery(label="Labelled pairs", columns=4, height=180, elem_id="support-gallery")
            with gr.Column(scale=2):
                gr.Markdown("### 2. Initialization and update parameters")
                init = gr.Dropdown(label="Initialization", choices=list(by_label), value=inits[0].label,
                                   elem_id="init")
                init_md = gr.Markdown(f"{inits[0].segmenter.described}; U's defaults from {source0}",
                                      elem_id="init-info")
                method = gr.Dropdown(label="Method", choices=METHOD_CHOICES, value=method0, elem_id="method",
                                     info="how the initialization adapts; lr and steps apply to fine-tuning (U)")
                strategy = gr.Dropdown(label="Several objects: strategy", choices=STRATEGY_CHOICES, value="auto",
                                       visible=False, elem_id="strategy",
                                       info="one adapted segmenter per object, or one head for all (the probe)")
                with gr.Row():
                    lr = gr.Number(label="Learning rate (lr)", value=lr0, minimum=0, elem_id="lr")
                    steps = gr.Number(label="Steps", value=steps0, precision=0, minimum=1, elem_id="steps")
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                gr.Markdown("### 3. Adapt and segment")
                query_files = gr.File(label="Query images (several; each upload adds to them)", file_count="multiple", file_types=types,
                                      elem_id="query-files")
                with gr.Row():
                    adapt_btn = gr.Button("Adapt", variant="primary", elem_id="adapt")
                    segment_btn = gr.Button("Segment queries", elem_id="segment")
                    clear_queries = gr.Button("Clear queries", elem_id="clear-queries")
                status = gr.Markdown("", elem_id="status")
                gallery = gr.Gallery(label="Overlays (object tinted red)", columns=3, height=260, elem_id="overlays")
                legend_md = gr.Markdown("", elem_id="legend")
                with gr.Row():
                    zip_dl = gr.DownloadButton("Masks (zip)", visible=False, elem_id="download-zip")
                    weights_dl = gr.DownloadButton("Adapted weights (safetensors)", visible=False,
                                                   elem_id="download-weights")
                    onnx_btn = gr.Button("Export ONNX", visible=False, elem_id="export-onnx")
                    onnx_dl = gr.DownloadButton("ONNX", visible=False, elem_id="download-onnx")
        gr.Markdown("### 4. Correct a prediction and adapt again")
        with gr.Row():
            with gr.Column(scale=3):
                correct_editor = mask_editor("Correct the prediction: red brush adds to the object, blue brush "
                                             "removes from it, the eraser takes strokes back", "correct-editor",
                                             (OBJECT, NOT_OBJECT))
            with gr.Column(scale=2):
                correct_pick = gr.Dropdown(label="Prediction to correct (or click its overlay)", choices=[],
                                           value=None, interactive=True, elem_id="correct-pick")
                add_btn = gr.Button("Add to support", variant="primary", elem_id="add-to-support")
                corrections_md = gr.Markdown("no prediction corrected yet", elem_id="corrections")

        # ------------------------------------------------------------------ handlers (one per control)

        def support_view(ws: Workspace, chosen: str | None, cls: str | None = None):
            names = [p.name for p in ws.support]
            chosen = chosen if chosen in names else (names[0] if names else None)
            return (ws, gr.Dropdown(choices=names, value=chosen), _editor_value(ws, chosen, cls), _pairs_text(ws),
                    _support_gallery(ws), corrections_text(ws))

        def correction_view(ws: Workspace, chosen: str | None, cls: str | None = None):
            """The predicted queries to choose from, and the chosen one (kept if still predicted) in the editor."""
            names = [n for n, _, _ in ws.results]
            chosen = chosen if chosen in names else None
            return (gr.Dropdown(choices=names, value=chosen),
                    _prediction_value(ws.prediction(chosen), ws, cls) if chosen else None)

        def params_for(ws: Workspace, label: str):
            i = by_label[label]
            lr_, steps_, source = i.default_params(len(ws.support))
            return lr_, steps_, f"{i.segmenter.described}; U's defaults from {source}"

        support_outs = [state, pick, editor, pairs_md, support_gallery, corrections_md]

        @shown
        def on_support(files, ws, label, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                try:
                    added, refused = ws.add_support(_paths(files))
                finally:
                    _consume(_paths(files))
            for message in refused:
                gr.Warning(message, duration=None)
            return (*support_view(ws, added[0] if added else None, cls), *params_for(ws, label), None)

        @shown
        def on_objects(text, ws, name, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                note = ws.set_classes(text or "")
                if note:
                    gr.Info(note, duration=None)
                cls = cls if cls in ws.classes else ws.classes[0]
                return (*support_view(ws, name, cls), ", ".join(ws.classes),
                        gr.Dropdown(choices=ws.classes, value=cls, visible=ws.multiclass),
                        gr.Dropdown(visible=ws.multiclass),
                        *results(ws, note or f"objects: {', '.join(ws.classes)}", None, cls)[1:])

        @shown
        def on_paint_class(cls, name, ws, chosen, request: gr.Request):
            ws = sessions.get(ws, request)
            return (_editor_value(ws, name, cls),
                    _prediction_value(ws.prediction(chosen), ws, cls) if chosen else gr.skip())

        @shown
        def on_pick(name, cls, ws, request: gr.Request):
            ws = sessions.get(ws, request)
            return _editor_value(ws, name, cls)

        @shown
        def on_remove(name, ws, label, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                if name:
                    ws.remove_support(name)
                return (*support_view(ws, None, cls), *params_for(ws, label))

        @shown
        def on_painted(name, value, ws, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                note = ws.set_mask(name or "", painted_mask(value), "painted", cls=_chosen(ws, cls))
                if note:
                    gr.Info(note, duration=None)
                return support_view(ws, name, cls)

        @shown
        def on_mask_file(file, name, ws, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            if not file:
                return (*support_view(ws, name, cls), None)
            with ws.lock:
                try:
                    note = ws.set_mask(name or "", _paths(file)[0], "uploaded", cls=_chosen(ws, cls))
                finally:
                    _consume(_paths(file))
                if note:
                    gr.Info(note, duration=None)
                return (*support_view(ws, name, cls), None)

        @shown
        def on_init(label, ws, request: gr.Request):
            ws = sessions.get(ws, request)
            return params_for(ws, label)

        @shown
        def on_queries(files, ws, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                try:
                    _, refused = ws.add_queries(_paths(files))
                finally:
                    _consume(_paths(files))
            for message in refused:
                gr.Warning(message, duration=None)
            return ws, _queries_text(ws), None

        @shown
        def on_clear_queries(ws, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                ws.clear_queries()
            return ws, _queries_text(ws), [], legend(ws), *correction_view(ws, None)

        def results(ws: Workspace, text: str, chosen: str | None = None, cls: str | None = None):
            several = ws.multiclass
            shown_ = [(o, f"{n} ({ws.contested.get(n, 0)} contested px)" if several else n) for n, o, _ in ws.results]
            has = bool(ws.results or ws.corrections())
            keep, tuned = ws.savable, ws.fine_tuned  # ONNX exports a fine-tuned network only
            return (ws, text, gr.Gallery(value=shown_, label="Overlays (each object in its colour)" if several
                                         else "Overlays (object tinted red)"), legend(ws),
                    gr.DownloadButton(value=str(ws.masks_zip()) if has else None, visible=has),
                    gr.DownloadButton("Adapted segmenter (zip)" if several else "Adapted weights (safetensors)",
                                      value=str(ws.weights()) if keep else None, visible=keep),
                    gr.Button(visible=tuned), gr.DownloadButton(visible=False), *correction_view(ws, chosen, cls))

        result_outs = [state, status, gallery, legend_md, zip_dl, weights_dl, onnx_btn, onnx_dl, correct_pick,
                       correct_editor]

        @shown
        def on_adapt(ws, label, lr_, steps_, seed_, method_, strategy_, chosen, cls, request: gr.Request,
                     progress=gr.Progress()):  # noqa: B008
            ws = sessions.get(ws, request)
            with ws.lock:
                total = int(steps_ or 0) * (len(ws.classes) if ws.multiclass else 1)  # one-vs-rest: U per object
                progress(0, desc="adapting")
                text = ws.adapt(by_label[label], lr=lr_, steps=int(steps_ or 0), seed=int(seed_ or 0),
                                method=method_ or "card", strategy=strategy_ or "auto",
                                progress=lambda t: progress((t, total), desc="adapting (U)", unit="steps"))
                if ws.queries:
                    progress(1.0, desc="segmenting the queries")
                    ws.segment()
                    text += f"; segmented {len(ws.results)} query image(s)"
                else:
                    text += "; now upload query images and press Segment queries"
                return results(ws, text, chosen, cls)

        @shown
        def on_segment(ws, chosen, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                ws.segment()
                return results(ws, f"segmented {len(ws.results)} query image(s)", chosen, cls)

        @shown
        def on_correct_pick(name, ws, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            return _prediction_value(ws.prediction(name or ""), ws, cls)

        @shown
        def on_overlay(ws, cls, evt: gr.SelectData, request: gr.Request):
            ws = sessions.get(ws, request)
            return correction_view(ws, ws.results[evt.index][0] if 0 <= evt.index < len(ws.results) else None, cls)

        @shown
        def on_add(name, value, ws, label, support_pick, cls, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                query = ws.prediction(name or "")  # no prediction or none chosen: say so before reading the editor
                cls = _chosen(ws, cls)
                pair = ws.correct(query.name, corrected_mask(value, _predicted(query, cls)), cls=cls)
                renamed = f" as {pair.name}" if pair.name != name else ""
                what = f"{cls} " if cls else ""
                text = (f"{name} added to the support set{renamed} with its corrected {what}mask "
                        f"({_percent(pair.changed)} of pixels changed); press Adapt to use it")
                return (*support_view(ws, support_pick, cls), *params_for(ws, label),
                        *results(ws, text, None, cls)[1:])

        @shown
        def on_onnx(ws, request: gr.Request):
            ws = sessions.get(ws, request)
            with ws.lock:
                return gr.DownloadButton(value=str(ws.onnx()), visible=True)

        support_files.upload(on_support, [support_files, state, init, paint_class],
                             [*support_outs, lr, steps, init_md, support_files])
        for event in (set_objects.click, objects.submit):
            event(on_objects, [objects, state, pick, paint_class],
                  [*support_outs, objects, paint_class, strategy, *result_outs[1:]])
        paint_class.input(on_paint_class, [paint_class, pick, state, correct_pick], [editor, correct_editor])
        pick.input(on_pick, [pick, paint_class, state], [editor])
        remove.click(on_remove, [pick, state, init, paint_class], [*support_outs, lr, steps, init_md])
        use_painted.click(on_painted, [pick, editor, state, paint_class], support_outs)
        mask_file.upload(on_mask_file, [mask_file, pick, state, paint_class], [*support_outs, mask_file])
        init.input(on_init, [init, state], [lr, steps, init_md])
        query_files.upload(on_queries, [query_files, state], [state, status, query_files])
        clear_queries.click(on_clear_queries, [state], [state, status, gallery, legend_md, correct_pick,
                                                        correct_editor])
        adapt_btn.click(on_adapt, [state, init, lr, steps, seed, method, strategy, correct_pick, paint_class],
                        result_outs,
                        concurrency_limit=concurrency, concurrency_id=WORK)
        segment_btn.click(on_segment, [state, correct_pick, paint_class], result_outs, concurrency_limit=concurrency,
                          concurrency_id=WORK)
        correct_pick.input(on_correct_pick, [correct_pick, state, paint_class], [correct_editor])
        gallery.select(on_overlay, [state, paint_class], [correct_pick, correct_editor])
        add_btn.click(on_add, [correct_pick, correct_editor, state, init, pick, paint_class],
                      [*support_outs, lr, steps, init_md, *result_outs[1:]])
        onnx_btn.click(on_onnx, [state], [onnx_dl], concurrency_limit=concurrency, concurrency_id=WORK)
        demo.unload(sessions.end)
    demo.sessions = sessions  # type: ignore[attr-defined]  # the server closes them all on shutdown
    return demo
