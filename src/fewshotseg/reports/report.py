"""`fewshotseg report RUN_DIR... [--out DIR]`: one markdown report with figures from finished run folders.

The report reads only the files the other commands write (results.json, trials.json, fp_k_summary.json,
weight_summary.json, metrics.jsonl, ...): it never trains or loads a model, so it takes seconds and can be rerun
whenever a run finishes. A folder's kind is recognised by its files; a folder holding runs as subfolders is searched
one level down. A run with missing, corrupt or partial files is listed as `skipped: <folder>: <reason>` in the
report, and everything else still renders: one bad folder must not hide a day of results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewshotseg.reports import overlays, plots, tables
from fewshotseg.runs import run_dir as files

# kind -> (the file that makes a folder a run of that kind, files that show such a run started but did not finish)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "evaluate": (files.RESULTS, (files.EPISODES, files.PREDICTIONS)),
    "tune": (files.TRIALS, (files.UPDATE_PARAMS, files.STUDY)),
    "fp-k": (files.FP_K_SUMMARY, (files.FP_K_ROWS,)),
    "weights": (files.WEIGHT_SUMMARY, (files.WEIGHT_ROWS,)),
    "training": (files.METRICS, (files.CONFIG, files.CHECKPOINT)),
}
UNFINISHED_HINT = {
    "tune": "the tune run has not finished (trials.json is written when the study ends)",
    "training": "training has not logged an iteration yet",
}


class RunFileError(Exception):
    """A run's file is missing, unreadable or not shaped as its producer writes it; the message is the reason."""


@dataclass
class Run:
    kind: str
    folder: Path
    shown: str  # the folder as the user named it (or given/sub), for messages a person can act on
    label: str
    content: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # non-fatal problems, each becomes a `skipped:` line


def write_report(run_dirs: list[str | Path], out: str | Path, *, title: str = "fewshotseg report",
                 notes: str | None = None) -> Path:
    """Write `out/report.md` and `out/figures/*.png` from the given run folders; returns the report's path."""
    run_dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    if not run_dirs:
        raise ValueError("write_report needs at least one run folder (RUN_DIR...); none was given")
    out = Path(out)
    runs, problems = load_runs(run_dirs)
    if not runs:  # a report of nothing is a mistake, not a result: nothing is written
        from fewshotseg.errors import UserError

        found = "".join(f"\n  {p}" for p in problems[:10])
        raise UserError(f"no finished fewshotseg run in {', '.join(map(str, run_dirs))}; pass the folders written by "
                        f"evaluate, tune, meta-train, joint-train, fp-k or analyze-weights (or folders holding "
                        f"them). Nothing was written to {out}:{found}")
    out.mkdir(parents=True, exist_ok=True)
    problems += [f"skipped: {r.shown}: {note}" for r in runs for note in r.notes]
    figures = Figures(out / "figures", problems)
    sections = [build_section(kind, of_kind, figures, problems) for kind in SECTIONS
                if (of_kind := [r for r in runs if r.kind == kind])]
    parts = [f"# {title}", _runs_overview(runs)]
    if notes:
        parts.insert(1, "## Settings and departures from the paper\n\n" + notes.strip())
    if problems:
        parts.append("## Problems\n\n" + "\n".join(f"- {p}" for p in problems))
    path = out / "report.md"
    path.write_text("\n\n".join(p for p in parts + sections if p) + "\n")
    return path


# --- Finding and reading runs -------------------------------------------------------------------------------------


def load_runs(run_dirs: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """Every recognisable run in the given folders (in the order given, subfolders by name) and a `skipped:`
    line for each folder or run that could not be read."""
    runs: list[Run] = []
    problems: list[str] = []
    seen: set[tuple[str, Path]] = set()
    for given in run_dirs:
        found, skipped = discover(Path(given))
        problems += [f"skipped: {shown}: {reason}" for shown, reason in skipped]
        for kind, folder, shown in found:
            if (kind, folder.resolve()) in seen:
                continue
            seen.add((kind, folder.resolve()))
            try:
                runs.append(LOADERS[kind](folder, shown))
            except RunFileError as err:
                problems.append(f"skipped: {shown}: {err}")
    runs = merge_shot_counts(runs)
    disambiguate(runs)
    return runs, problems


def _initialization_key(results: dict) -> tuple:
    """What makes two evaluations rows of one initialization: its label when one was given, else what was
    evaluated and on which data (U's parameters may differ per shot count, as UHO tunes them per shot count); in
    both cases the same adaptation method (and settings), since a row names one."""
    method = tables.method_of(results)
    settings = method["settings"]
    if method["method"] == "finetune" and not settings.get("refine_radius"):
        settings = {}  # plain U, as results.json files written before the method field say it
    how = (method["method"], json.dumps(settings, sort_keys=True, default=str))
    if isinstance(results.get("label"), str) and results["label"].strip():
        return ("label", results["label"], *how)
    return ("init", str(results.get("init")), str(results.get("data")), str(results.get("protocol")),
            str(results.get("split")), str(results.get("size")), str(results.get("fold")), *how)


def merge_shot_counts(runs: list[Run]) -> list[Run]:
    """Evaluations of one initialization at different shot counts (one folder per shot count) become one run,
    hence one table row; its `merged_from` lists the folders. Runs that share a shot count stay apart."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.kind == "evaluate":
            groups.setdefault(_initialization_key(r.content["results"]), []).append(r)
    out: list[Run] = []
    done: set[int] = set()
    for r in runs:
        if id(r) in done:
            continue
        group = groups.get(_initialization_key(r.content["results"]), []) if r.kind == "evaluate" else []
        shot_lists = [list(g.content["results"]["shots"]) for g in group]
        flat = [s for shots in shot_lists for s in shots]
        if len(group) < 2 or len(flat) != len(set(flat)):
            out.append(r)
            done.add(id(r))
            continue
        first = group[0].content["results"]
        merged = {**first, "shots": {}, "update_params_by_shots": {}, "update_params_per_shot": {}}
        for g in group:
            res = g.content["results"]
            merged["shots"].update(res["shots"])
            for s in res["shots"]:
                merged["update_params_by_shots"][s] = res.get("update_params") or {}
            per_shot = res.get("update_params_per_shot")
            if isinstance(per_shot, dict):
                merged["update_params_per_shot"].update(per_shot)
        label = first.get("label") or Path(str(first.get("init"))).name or group[0].label
        content = {"results": merged, "merged_from": [(g.shown, list(g.content["results"]["shots"])) for g in group]}
        with_predictions = next((g for g in group if "predictions" in g.content), None)
        if with_predictions is not None:
            content["predictions"] = with_predictions.content["predictions"]
        out.append(Run("evaluate", group[0].folder, group[0].shown, label, content,
                       [n for g in group for n in g.notes]))
        done.update(id(g) for g in group)
    return out


def discover(given: Path) -> tuple[list[tuple[str, Path, str]], list[tuple[str, str]]]:
    """(kind, folder, shown) of the runs in `given` and its direct subfolders, and (shown, reason) problems."""
    if not given.exists():
        return [], [(str(given), "does not exist")]
    if not given.is_dir():
        return [], [(str(given), "not a folder")]
    found: list[tuple[str, Path, str]] = []
    problems: list[tuple[str, str]] = []
    subfolders = sorted(p for p in given.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in [given, *subfolders]:
        shown = str(given if folder == given else given / folder.name)
        kinds, unfinished = scan(folder)
        found += [(kind, folder, shown) for kind in kinds]
        problems += [(shown, reason) for reason in unfinished]
    if not found and not problems:
        looked = ", ".join(primary for primary, _ in KINDS.values())
        problems.append((str(given), f"no run files here or one level down (looked for {looked})"))
    return found, problems


def scan(folder: Path) -> tuple[list[str], list[str]]:
    """The kinds of run whose files are in `folder`, and a reason for each kind that started but has no result."""
    kinds, unfinished = [], []
    for kind, (primary, partial) in KINDS.items():
        if (folder / primary).is_file():
            kinds.append(kind)
        elif present := [name for name in partial if (folder / name).exists()]:
            hint = UNFINISHED_HINT.get(kind, "the run is unfinished or crashed")
            unfinished.append(f"{', '.join(present)} without {primary}: {hint}")
    return kinds, unfinished


def disambiguate(runs: list[Run]) -> None:
    """Labels must be unique per kind (table rows, legend entries, figure names): repeat labels get the parent
    folder's name, then a counter."""
    for kind in KINDS:
        same = [r for r in runs if r.kind == kind]
        labels = [r.label for r in same]
        for r in same:
            if labels.count(r.label) > 1:
                r.label = f"{r.label} ({r.folder.parent.name}/{r.folder.name})"
        used: dict[str, int] = {}
        for r in same:
            used[r.label] = used.get(r.label, 0) + 1
            if used[r.label] > 1:
                r.label = f"{r.label} #{used[r.label]}"


def read_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunFileError(f"{name}: missing") from err
    except json.JSONDecodeError as err:
        raise RunFileError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"{name}: unreadable ({err})") from err


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it has the type the producer writes, else a RunFileError naming where the file is wrong."""
    if not isinstance(value, kind):
        wanted = {dict: "an object", list: "a list", str: "a string"}.get(kind, "another type")
        raise RunFileError(f"{what}: expected {wanted}, found {json.dumps(value)[:60]}")
    return value


def expect_estimate(value: Any, what: str) -> dict:
    """An interval dictionary ({"mean", "ci95", ...}) whose mean is a number."""
    estimate = expect(value, dict, what)
    mean = estimate.get("mean")
    if not isinstance(mean, int | float) or isinstance(mean, bool):
        raise RunFileError(f"{what}: no numeric mean")
    return estimate


def label_of(doc: dict, folder: Path) -> str:
    label = doc.get("label")
    return label if isinstance(label, str) and label.strip() else folder.name


def load_evaluate(folder: Path, shown: str) -> Run:
    results = expect(read_json(folder, files.RESULTS), dict, "results.json")
    shots = expect(results.get("shots"), dict, "results.json: shots")
    if not shots:
        raise RunFileError("results.json: no shot count was evaluated")
    for s, summary in shots.items():
        summary = expect(summary, dict, f"results.json: shots.{s}")
        expect_estimate(summary.get("paper_miou"), f"results.json: shots.{s}.paper_miou")
        for optional in ("hsnet_miou", "fb_iou"):
            if optional in summary:
                expect(summary[optional], dict, f"results.json: shots.{s}.{optional}")
    if "update_params" in results:
        expect(results["update_params"], dict, "results.json: update_params")
    if "method" in results:  # without it (results written before evaluate had methods) the run fine-tuned with U
        method = expect(results["method"], dict, "results.json: method")
        expect(method.get("method"), str, "results.json: method.method")
        if "settings" in method:
            expect(method["settings"], dict, "results.json: method.settings")
    run = Run("evaluate", folder, shown, label_of(results, folder), {"results": results})
    if (folder / files.PREDICTIONS).is_file():
        try:
            run.content["predictions"] = overlays.load_predictions(folder / files.PREDICTIONS)
        except ValueError as err:
            run.notes.append(f"{err}; no overlay")
    else:
        run.notes.append("predictions.npz: missing; no overlay")
    return run


def load_tune(folder: Path, shown: str) -> Run:
    doc = expect(read_json(folder, files.TRIALS), dict, "trials.json")
    trials = expect(doc.get("trials"), list, "trials.json: trials")
    for i, trial in enumerate(trials):
        expect(trial, dict, f"trials.json: trials[{i}]")
        expect(trial.get("state"), str, f"trials.json: trials[{i}].state")
        expect(trial.get("params"), dict, f"trials.json: trials[{i}].params")
    run = Run("tune", folder, shown, label_of(doc, folder), {"trials": doc, "chosen": None})
    try:
        chosen = expect(read_json(folder, files.UPDATE_PARAMS), dict, "update_params.json")
        expect(chosen.get("update_params"), dict, "update_params.json: update_params")
        run.content["chosen"] = chosen
    except RunFileError as err:
        run.notes.append(f"{err}; the best-ω row is derived from trials.json")
    return run


def load_fp_k(folder: Path, shown: str) -> Run:
    doc = expect(read_json(folder, files.FP_K_SUMMARY), dict, "fp_k_summary.json")
    summary = expect(doc.get("summary"), dict, "fp_k_summary.json: summary")
    if not summary:
        raise RunFileError("fp_k_summary.json: no initialization in summary")
    for label, per_k in summary.items():
        for k, estimate in expect(per_k, dict, f"fp_k_summary.json: summary.{label}").items():
            expect_estimate(estimate, f"fp_k_summary.json: summary.{label}.{k}")
    if "ks" in doc:
        expect(doc["ks"], list, "fp_k_summary.json: ks")
    return Run("fp-k", folder, shown, label_of(doc, folder), {"doc": doc})


def load_weights(folder: Path, shown: str) -> Run:
    doc = expect(read_json(folder, files.WEIGHT_SUMMARY), dict, "weight_summary.json")
    summary = expect(doc.get("summary"), dict, "weight_summary.json: summary")
    if not summary:
        raise RunFileError("weight_summary.json: no initialization in summary")
    for label, blocks in summary.items():
        for block, metrics in expect(blocks, dict, f"weight_summary.json: summary.{label}").items():
            for metric, estimate in expect(metrics, dict, f"weight_summary.json: summary.{label}.{block}").items():
                expect_estimate(estimate, f"weight_summary.json: summary.{label}.{block}.{metric}")
    return Run("weights", folder, shown, label_of(doc, folder), {"doc": doc})


def load_training(folder: Path, shown: str) -> Run:
    metrics, bad = read_metrics(folder / files.METRICS)
    if not metrics:
        raise RunFileError("metrics.jsonl: no readable row with an iteration and a loss")
    run = Run("training", folder, shown, folder.name, {"metrics": metrics, "config": {}})
    if bad:
        run.notes.append(f"metrics.jsonl: {bad} unreadable line(s) ignored")
    try:
        config = yaml.safe_load((folder / files.CONFIG).read_text())
        run.content["config"] = expect(config, dict, "config.yaml")
    except FileNotFoundError:
        run.notes.append("config.yaml: missing; the kind of training is unknown")
    except RunFileError as err:
        run.notes.append(str(err))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        run.notes.append(f"config.yaml: unreadable ({str(err).splitlines()[0]})")
    run.content["finished"] = finished(folder / files.LOG)
    return run


def finished(log: Path) -> bool:
    """meta-train and joint-train log a `done:` line when they export the initialization, and only then."""
    try:
        return any(" done: " in line for line in log.read_text(errors="replace").splitlines())
    except OSError:
        return False


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The usable rows of a metrics.jsonl and the number of others: a killed run can leave a half-written line."""
    records, unreadable = files.scan_jsonl(path)
    rows = [r for r in records
            if isinstance(r, dict) and tables.is_number(r.get("iteration")) and tables.is_number(r.get("loss"))]
    return sorted(rows, key=lambda r: r["iteration"]), len(unreadable) + len(records) - len(rows)


LOADERS: dict[str, Callable[[Path, str], Run]] = {
    "evaluate": load_evaluate, "tune": load_tune, "fp-k": load_fp_k, "weights": load_weights,
    "training": load_training,
}


# --- Figures ------------------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A file-name-safe version of a run label."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "run"


class Figures:
    """Draws figures into one folder under unique names; a figure that fails becomes a `skipped:` line."""

    def __init__(self, folder: Path, problems: list[str]):
        self.folder = folder
        self.problems = problems
        self.used: set[str] = set()

    def name(self, stem: str) -> str:
        base = slug(stem)
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}-{n}"
        self.used.add(name)
        return f"{name}.png"

    def draw(self, run: Run, stem: str, caption: str, draw: Callable[[Path], Path]) -> str:
        """Markdown for the figure `draw` writes, or "" (and a problem line) when drawing it fails."""
        name = self.name(stem)
        try:
            draw(self.folder / name)
        except Exception as err:  # a figure of odd data must not stop the rest of the report
            self.problems.append(f"skipped: {run.shown}: figure {name} failed ({type(err).__name__}: {err})")
            return ""
        return f"![{caption}](figures/{name})\n\n*{caption}*"


# --- Sections -----------------------------------------------------------------------------------------------------


def build_section(kind: str, runs: list[Run], figures: Figures, problems: list[str]) -> str:
    """One kind's section; should odd contents break it, the other sections still render and the runs are named."""
    try:
        return SECTIONS[kind](runs, figures)
    except Exception as err:  # a run that passed the checks yet breaks a table must not take the report down
        problems += [f"skipped: {r.shown}: {kind} section failed ({type(err).__name__}: {err})" for r in runs]
        return ""


def _runs_overview(runs: list[Run]) -> str:
    if not runs:
        return "No run could be read; see the problems below."
    rows = [[tables.cell(r.label), r.kind, f"`{tables.cell(r.shown)}`"] for r in runs]
    return "## Runs\n\n" + tables.markdown_table(["Run", "kind", "folder"], rows, numeric_from=3)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def evaluation_section(runs: list[Run], figures: Figures) -> str:
    pairs = [(r.label, r.content["results"]) for r in runs]
    text = _join(
        "## Evaluation (Table 2)",
        "Mean IoU over the test tasks' random support/query splits ± the half-width of its 95 % interval: "
        "Student's t over the task splits when each task has one split, otherwise a percentile bootstrap over "
        "tasks (a task's splits share its class); the best run per shot count is in bold. Class-pooled mIoU "
        "(HSNet's reduction) and FB-IoU are given with a bootstrap 95 % interval over classes. The method "
        "column says how each run adapted to a task's support images: finetune fine-tunes the network with the "
        "update routine U; probe, prototype and rf fit on frozen features (rf: on image filters) and do not use U. "
        "lr and steps are U's update parameters, given for finetune rows only (– where U was not used); each run's "
        "settings are listed under the table.",
        tables.evaluation_table(pairs),
        "Floors, computed on the same episodes without looking at any image: *all foreground* predicts every "
        "pixel foreground; *support foreground rate* marks each pixel foreground at random with the support "
        "masks' mean foreground rate (expected counts). A row is above chance only when it beats both."
        if any(tables.has_floors(res) for _, res in pairs) else "",
        tables.evaluation_details(pairs),
        _merged_note(runs),
    )
    images = []
    for r in runs:
        if "predictions" in r.content:
            shots = ", ".join(f"{s}-shot" for s in sorted({int(s) for s in r.content["predictions"]["shots"]}))
            caption = f"{r.label}: query images ({shots}), prediction p > 0.5 in red, ground truth outlined"
            images.append(figures.draw(r, f"overlay-{r.label}", caption, lambda path, r=r: overlays.plot_overlays(
                r.content["predictions"], f"{r.label}: predictions on query images", path)))
    if any(images):
        text = _join(text, "### Prediction overlays", *images)
    return text


def _merged_note(runs: list[Run]) -> str:
    """Says which rows were merged from several per-shot evaluation folders."""
    lines = []
    for r in runs:
        if r.content.get("merged_from"):
            parts = ", ".join(f"`{tables.cell(shown)}` ({', '.join(s + '-shot' for s in shots)})"
                              for shown, shots in r.content["merged_from"])
            lines.append(f"- **{tables.cell(r.label)}** merges the evaluations of one initialization across shot "
                         f"counts: {parts}")
    return "\n".join(lines)


def tuning_section(runs: list[Run], figures: Figures) -> str:
    parts = ["## Update-hyperparameter optimisation (Fig. 3)",
             "The best ω per tune run: lr from the search, steps the median early-stopping step over the "
             "validation tasks, objective the validation mean IoU at those values.",
             tables.tuning_table([(r.label, r.content["trials"], r.content["chosen"]) for r in runs])]
    for r in runs:
        doc, chosen = r.content["trials"], r.content["chosen"]
        best = chosen.get("trial") if chosen else None
        title = f"UHO: {r.label} ({tables.cell(doc.get('shots'))}-shot, {len(doc['trials'])} trials)"
        parts.append(figures.draw(
            r, f"uho-{r.label}", f"{r.label}: validation mean IoU of each trial against U's learning rate, GP fit",
            lambda path, r=r, title=title, best=best: plots.plot_tuning(r.content["trials"]["trials"], title, path,
                                                                          best_number=best)))
    return _join(*parts)


def fp_k_section(runs: list[Run], figures: Figures) -> str:
    parts = ["## FP-k: mean IoU against the number of training images (Fig. 4)"]
    for r in runs:
        doc = r.content["doc"]
        tasks = doc.get("tasks")
        about = (f"{len(tasks)} tasks ({', '.join(map(str, tasks))}), " if isinstance(tasks, list) else "") + \
            f"{tables.cell(doc.get('repeats'))} repeats; mean IoU ± CI95 over (task, repeat), best per k in bold."
        parts += [f"### {r.label}", about, tables.fp_k_table(doc["summary"], doc.get("ks")),
                  figures.draw(r, f"fp-k-{r.label}", f"{r.label}: mean IoU against k per initialization",
                               lambda path, r=r: plots.plot_fp_k(r.content["doc"]["summary"],
                                                                 f"FP-k: {r.label}", path, r.content["doc"].get("ks")))]
    return _join(*parts)


def weights_section(runs: list[Run], figures: Figures) -> str:
    parts = ["## How far adaptation moves each initialization (Fig. 6/7)"]
    for r in runs:
        doc = r.content["doc"]
        params = doc.get("update_params") if isinstance(doc.get("update_params"), dict) else {}
        about = (f"U: lr {tables.cell(params.get('lr'))}, {tables.cell(params.get('steps'))} steps; "
                 f"{tables.cell(doc.get('tasks'))} tasks. d1 is the Euclidean distance between θ and the adapted "
                 "θτ, d2 the distance of their unit-normalised vectors, d3 the mean absolute change of a parameter.")
        summary = doc["summary"]
        parts += [f"### {r.label}", about, tables.weights_table(summary),
                  figures.draw(r, f"weights-{r.label}", f"{r.label}: d1, d2, d3 per block in network order",
                               lambda path, r=r: plots.plot_weight_blocks(
                                   r.content["doc"]["summary"], f"Weight distances per block: {r.label}", path)),
                  figures.draw(r, f"weights-network-{r.label}", f"{r.label}: whole-network d1 per initialization",
                               lambda path, r=r: plots.plot_network_distance(
                                   r.content["doc"]["summary"], f"Whole-network d1: {r.label}", path))]
    return _join(*parts)


def training_section(runs: list[Run], figures: Figures) -> str:
    rows = [(r.label, r.content["config"], r.content["metrics"], r.content["finished"]) for r in runs]
    parts = ["## Training", "Final loss is the last logged value; validation mIoU ± CI95 over held-out tasks.",
             tables.training_table(rows)]
    for r in runs:
        config = r.content["config"]
        unit = "meta-iteration" if "algorithm" in config else "optimizer step" if "epochs" in config else "iteration"
        title = f"{r.label}: {tables.training_kind(config)}"
        parts.append(figures.draw(r, f"training-{r.label}", f"{r.label}: {curves(r.content['metrics'])}",
                                  lambda path, r=r, title=title, unit=unit: plots.plot_training(
                                      r.content["metrics"], title, path, unit=unit)))
    return _join(*parts)


def curves(metrics: list[dict]) -> str:
    """What a training figure shows, as `plots.plot_training` chooses it."""
    if any(tables.is_number(m.get("val_miou")) for m in metrics):
        return "training loss and validation mIoU"
    if any(tables.is_number(m.get("lr")) for m in metrics):
        return "training loss and learning rate"
    return "training loss"


SECTIONS: dict[str, Callable[[list[Run], Figures], str]] = {
    "evaluate": evaluation_section, "tune": tuning_section, "fp-k": fp_k_section, "weights": weights_section,
    "training": training_section,
}
