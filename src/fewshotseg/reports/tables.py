"""Markdown tables of finished runs, built from the parsed contents of their files (no run is recomputed).

Every function takes the dictionaries exactly as the producing commands wrote them (`results.json`, `trials.json`,
`fp_k_summary.json`, ...), already checked by `reports.report`, and returns markdown text. Fractions are printed as
percentages with two decimals, the precision the paper's Table 2 uses, so numbers can be compared to it by eye.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "–"


def is_number(value: Any) -> bool:
    """A real, finite number (JSON booleans are ints in Python and must not count as scores)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def percent_ci(estimate: Mapping[str, Any] | None) -> str:
    """`mean ± ci95 %`, the paper's way of printing a mean IoU, e.g. `76.45 ± 1.16 %`."""
    if not estimate or not is_number(estimate.get("mean")):
        return MISSING
    text = f"{100 * estimate['mean']:.2f}"
    if is_number(estimate.get("ci95")):
        text += f" ± {100 * estimate['ci95']:.2f}"
    return text + " %"


def percent_interval(estimate: Mapping[str, Any] | None) -> str:
    """`mean [low, high] %` for bootstrap estimates, whose percentile interval need not be symmetric."""
    if not estimate or not is_number(estimate.get("mean")):
        return MISSING
    text = f"{100 * estimate['mean']:.2f}"
    if is_number(estimate.get("low")) and is_number(estimate.get("high")):
        text += f" [{100 * estimate['low']:.2f}, {100 * estimate['high']:.2f}]"
    return text + " %"


def plain_ci(estimate: Mapping[str, Any] | None) -> str:
    """`mean ± ci95` for quantities that are not fractions (weight distances)."""
    if not estimate or not is_number(estimate.get("mean")):
        return MISSING
    text = f"{estimate['mean']:.4g}"
    if is_number(estimate.get("ci95")):
        text += f" ± {estimate['ci95']:.2g}"
    return text


def cell(value: Any) -> str:
    """Text safe inside a markdown table cell: pipes and line breaks would split the row."""
    if value is None or value == "":
        return MISSING
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def bold(text: str) -> str:
    return f"**{text}**" if text != MISSING else text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int = 1) -> str:
    """A pipe table; columns from `numeric_from` on are right-aligned so numbers line up in rendered views."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def best_rows(means: Sequence[float | None]) -> set[int]:
    """Indices of the highest mean; empty when fewer than two rows have a value, since one row is not "best"."""
    valid = [(i, m) for i, m in enumerate(means) if is_number(m)]
    if len(valid) < 2:
        return set()
    top = max(m for _, m in valid)
    return {i for i, m in valid if m == top}


def shot_counts(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every shot count any run evaluated, in numeric order (the paper has 1 and 5)."""
    found = {str(s) for r in results for s in r.get("shots", {})}
    return sorted(found, key=lambda s: (int(s) if s.isdigit() else math.inf, s))


def _mean_of(summary: Mapping[str, Any] | None, reduction: str) -> float | None:
    return ((summary or {}).get(reduction) or {}).get("mean")


# The adaptation methods (`adaptation.methods`), as a table cell says them.
METHOD_NAMES = {"finetune": "finetune (U)", "probe": "probe (frozen-feature linear probe)",
                "prototype": "prototype (frozen-feature prototypes)", "rf": "rf (random-forest pixel classifier)"}


def method_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """The adaptation method of an evaluate run: results.json's `method` ({"method", "settings", "source"}), or
    fine-tuning with U for results written before evaluate recorded it (U was then the only method)."""
    recorded = results.get("method")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("method"), str) and recorded["method"]:
        settings = recorded.get("settings")
        return {**recorded, "settings": dict(settings) if isinstance(settings, Mapping) else {}}
    return {"method": "finetune", "settings": {}}


def uses_u(results: Mapping[str, Any]) -> bool:
    """Whether the run adapted with U, so that its update parameters describe it; floor rows adapt nothing."""
    return not results.get("floor") and method_of(results)["method"] == "finetune"


def method_cell(results: Mapping[str, Any]) -> str:
    if results.get("floor"):
        return MISSING
    name = method_of(results)["method"]
    return cell(METHOD_NAMES.get(name, name))


def describe_method(method: Mapping[str, Any]) -> str:
    """`name (setting value, ...)`, as `MethodSpec.describe` prints it (lists joined with +)."""
    settings = method.get("settings") or {}
    shown = ", ".join(f"{k} {'+'.join(map(str, v)) if isinstance(v, list) else cell(v)}" for k, v in settings.items())
    return cell(method["method"]) + (f" ({shown})" if shown else "")


def evaluation_table(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Table 2: one row per evaluate run (label, results.json), in the order given.

    Columns: the paper's mean IoU ± CI95 over task splits per shot count (best row in bold per column), HSNet's
    class-pooled mIoU and FB-IoU with their bootstrap intervals, the adaptation method, U's learning rate and steps
    (empty for a method that does not use U), and the number of task splits the paper's interval is over.
    """
    shots = shot_counts([r for _, r in runs])
    runs = list(runs) + floor_rows(runs)
    header = ["Run"] + [f"{s}-shot mean IoU" for s in shots]
    header += [f"{s}-shot class-pooled mIoU" for s in shots] + [f"{s}-shot FB-IoU" for s in shots]
    header += ["method", "lr", "steps", "task splits"]
    best = {s: best_rows([_mean_of(r["shots"].get(s), "paper_miou") if not r.get("floor") else None
                          for _, r in runs]) for s in shots}
    rows = []
    for i, (label, results) in enumerate(runs):
        by_shot = results["shots"]
        row = [cell(label)]
        for s in shots:
            text = percent_ci((by_shot.get(s) or {}).get("paper_miou"))
            row.append(bold(text) if i in best[s] else text)
        row += [percent_interval((by_shot.get(s) or {}).get("hsnet_miou")) for s in shots]
        row += [percent_interval((by_shot.get(s) or {}).get("fb_iou")) for s in shots]
        u = uses_u(results)
        row += [method_cell(results),
                _per_shot_param(results, "lr", shots) if u else MISSING,
                _per_shot_param(results, "steps", shots) if u else MISSING,
                cell(_splits(by_shot))]
        rows.append(row)
    return markdown_table(header, rows)


FLOORS = {"all_foreground": "floor: all foreground", "support_rate": "floor: support foreground rate"}


def has_floors(results: Mapping[str, Any]) -> bool:
    return any(isinstance(s, Mapping) and s.get("floors") for s in results.get("shots", {}).values())


def floor_rows(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, dict]]:
    """The floor rows under a table. Runs evaluated on the same episodes have the same floors: then one pair of
    rows covers every shot count; otherwise one pair per run, named after it."""
    per_run = [(label, {s: v["floors"] for s, v in results["shots"].items()
                        if isinstance(v, Mapping) and v.get("floors")}) for label, results in runs]
    per_run = [(label, by_shot) for label, by_shot in per_run if by_shot]
    if not per_run:
        return []

    def value(floors: Mapping[str, Any]) -> tuple:
        return tuple(round(_mean_of(floors.get(f), "paper_miou") or 0, 6) for f in FLOORS)

    distinct: dict[str, set] = {}
    for _, by_shot in per_run:
        for s, floors in by_shot.items():
            distinct.setdefault(s, set()).add(value(floors))
    if all(len(v) == 1 for v in distinct.values()):
        shared: dict[str, Any] = {}
        for _, by_shot in per_run:
            for s, floors in by_shot.items():
                shared.setdefault(s, floors)
        groups = [("", shared)]
    else:
        groups = [(f" ({label})", by_shot) for label, by_shot in per_run]
    return [(text + suffix, {"floor": True, "shots": {s: f[name] for s, f in by_shot.items() if name in f}})
            for suffix, by_shot in groups for name, text in FLOORS.items()]


def _per_shot_param(results: Mapping[str, Any], key: str, shots: Sequence[str]) -> str:
    """U's `key` of a row; "a / b" per shot count for a row merged from per-shot evaluations with different U."""
    by_shots = results.get("update_params_by_shots")
    if isinstance(by_shots, Mapping) and by_shots:
        values = [cell((by_shots.get(s) or {}).get(key)) for s in shots if s in by_shots]
        unique = list(dict.fromkeys(values))
        return unique[0] if len(unique) == 1 else " / ".join(values)
    return cell((results.get("update_params") or {}).get(key))


def _splits(by_shot: Mapping[str, Any]) -> str:
    """The n of the paper's interval; shown once when every shot count has the same n."""
    counts = [str(s.get("paper_miou", {}).get("n")) for s in by_shot.values() if isinstance(s, Mapping)]
    unique = list(dict.fromkeys(c for c in counts if c != "None"))
    return " / ".join(unique)


def evaluation_details(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One line per evaluate run saying what was evaluated and how, which the table has no room for."""
    lines = []
    for label, r in runs:
        method = method_of(r)
        if method["method"] == "finetune":
            params = r.get("update_params") or {}
            u = ", ".join(f"{k} {cell(params[k])}" for k in ("lr", "steps", "batch_size", "dropout", "aug_rate")
                          if k in params)
            how = "adapted by fine-tuning with U" + (f": {u}" if u else "")
            sources = _u_sources(r)
            if sources:
                how += f" (from {sources})"
            if method["settings"].get("refine_radius"):
                how += f"; {describe_method(method)}"
        else:  # U's values may be in results.json (the card holds them), but they played no part
            how = f"adapted with {describe_method(method)}"
            if method.get("source"):
                how += f" (settings from {cell(method['source'])})"
            how += "; U not used"
        if method.get("given") is True:
            how += f"; method given (--method {cell(method['method'])}), not the card's"
        lines.append(f"- **{cell(label)}**: {cell(r.get('described') or r.get('init'))}; data `{cell(r.get('data'))}`, "
                     f"{cell(r.get('size'))} px, {cell(r.get('protocol'))} protocol, {cell(r.get('tasks'))} tasks; "
                     + how)
    return "\n".join(lines)


def _u_sources(results: Mapping[str, Any]) -> str:
    """Where U's values came from, per shot count when they differ (results.json's update_params_per_shot)."""
    per_shot = results.get("update_params_per_shot")
    if not isinstance(per_shot, Mapping):
        return ""
    found = {s: p.get("source") for s, p in per_shot.items() if isinstance(p, Mapping) and p.get("source")}
    if len(set(found.values())) == 1:
        return cell(next(iter(found.values())))
    return "; ".join(f"{s}-shot: {cell(v)}" for s, v in found.items())


def best_trial(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The completed trial with the highest objective, as `tune` chooses it."""
    done = [t for t in trials if t.get("state") == "COMPLETE" and is_number(t.get("value"))]
    return max(done, key=lambda t: t["value"]) if done else None


def tuning_table(runs: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]) -> str:
    """The best omega per tune run (label, trials.json, update_params.json or None).

    update_params.json is authoritative (it holds every value of omega, searched or not); without it the row is
    derived from the best completed trial in trials.json.
    """
    header = ["Run", "shots", "lr", "steps", "other searched values", "objective (mean IoU)", "best trial",
              "completed", "failed"]
    rows = []
    for label, doc, chosen in runs:
        trials = doc["trials"]
        best = best_trial(trials)
        searched = [s.strip() for s in str(doc.get("search", "lr")).split(",") if s.strip() and s.strip() != "lr"]
        if chosen is not None:
            params, objective, number = chosen["update_params"], chosen.get("objective"), chosen.get("trial")
        elif best is not None:
            params = {**best["params"], "steps": best.get("median_steps")}
            objective, number = best["value"], best.get("number")
        else:
            params, objective, number = {}, None, None
        others = ", ".join(f"{s} {cell(params[s])}" for s in searched if s in params)
        failed = sum(t.get("state") == "FAIL" for t in trials)
        completed = sum(t.get("state") == "COMPLETE" for t in trials)
        rows.append([cell(label), cell(doc.get("shots")), cell(params.get("lr")), cell(params.get("steps")),
                     others or MISSING, percent_ci({"mean": objective}), cell(number), str(completed), str(failed)])
    return markdown_table(header, rows)


def k_values(summary: Mapping[str, Mapping[str, Any]], ks: Sequence[Any] | None = None) -> list[str]:
    """The k columns: the run's own list when it wrote one, else every k any initialization has."""
    found = [str(k) for k in ks] if ks else []
    for per_k in summary.values():
        found += [k for k in per_k if k not in found]
    return sorted(dict.fromkeys(found), key=lambda k: (int(k) if k.isdigit() else math.inf, k))


def fp_k_table(summary: Mapping[str, Mapping[str, Any]], ks: Sequence[Any] | None = None) -> str:
    """Initialization x k: mean IoU ± CI95 over (task, repeat), best initialization per k in bold."""
    columns = k_values(summary, ks)
    labels = list(summary)
    best = {k: best_rows([(summary[lab].get(k) or {}).get("mean") for lab in labels]) for k in columns}
    rows = []
    for i, label in enumerate(labels):
        row = [cell(label)]
        for k in columns:
            text = percent_ci(summary[label].get(k))
            row.append(bold(text) if i in best[k] else text)
        rows.append(row)
    return markdown_table(["Initialization"] + [f"k = {k}" for k in columns], rows)


def weights_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Whole-network Euclidean distance d1 between an initialization and its adapted weights, per initialization."""
    rows = []
    for label, blocks in summary.items():
        network = (blocks.get("network") or {}).get("d1")
        rows.append([cell(label), plain_ci(network), cell((network or {}).get("n"))])
    return markdown_table(["Initialization", "network d1 = ‖θ − θτ‖₂", "task splits"], rows)


def training_table(runs: Sequence[tuple[str, Mapping[str, Any], Sequence[Mapping[str, Any]], bool]]) -> str:
    """One row per training run (label, config.yaml, metrics.jsonl rows, finished according to log.txt)."""
    header = ["Run", "kind", "iterations", "final loss", "final validation mIoU", "best validation mIoU", "status"]
    rows = []
    for label, config, metrics, finished in runs:
        last = metrics[-1]
        planned = config.get("iterations")
        done = f"{last['iteration']}" + (f" of {planned}" if planned is not None else "")
        validated = [m for m in metrics if is_number(m.get("val_miou"))]
        final = best = MISSING
        if validated:
            v = validated[-1]
            final = f"{percent_ci({'mean': v['val_miou'], 'ci95': v.get('val_ci95')})} ({cell(v.get('val_tasks'))} tasks)"
            top = max(validated, key=lambda m: m["val_miou"])
            best = f"{percent_ci({'mean': top['val_miou'], 'ci95': top.get('val_ci95')})} at {top['iteration']}"
        rows.append([cell(label), training_kind(config), done, f"{last['loss']:.4f}", final, best,
                     "finished" if finished else "unfinished"])
    return markdown_table(header, rows, numeric_from=2)


def training_kind(config: Mapping[str, Any]) -> str:
    """meta-train writes an `algorithm`, joint-train an `epochs` field: that is how the two configs differ."""
    if "algorithm" in config:
        return f"meta-train ({config['algorithm']})"
    if "epochs" in config:
        return f"joint-train ({cell(config['epochs'])} epochs)"
    return "training"
