"""docs/online.md from an assessment's results: tables and conclusions, every number computed."""
from __future__ import annotations

import json
import math

import numpy as np

from .assessment import cell, mean, select, stats
from .metrics import RECOVERY_TOLERANCE

GAP_PAIRS = (("Tween", "TweenChain"), ("StepTween", "StepTweenChain"))


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def _grid(result: dict, stream: str, key: str, digits: int = 2, scale: float = 1.0, best: str | None = None) -> list[str]:
    """A markdown table of `key` for `stream`: a row per network, a column per mode; with best="max"
    or "min" the best mean of each row is bold."""
    meta, runs = result["meta"], result["runs"]
    out = [_row(["network", *meta["modes"]]), _row(["---"] * (len(meta["modes"]) + 1))]
    for arch in meta["archs"]:
        cells = [select(runs, stream=stream, arch=arch, mode=m) for m in meta["modes"]]
        means = [stats(c, key)[0] for c in cells]
        texts = [cell(c, key, digits, scale) for c in cells]
        finite = [m for m in means if math.isfinite(m)]
        if best and finite:
            target = max(finite) if best == "max" else min(finite)
            texts = [f"**{t}**" if m == target else t for t, m in zip(texts, means)]
        out.append(_row([arch, *texts]))
    return out


def _best_counts(result: dict, stream: str) -> dict[str, int]:
    meta, runs = result["meta"], result["runs"]
    wins = dict.fromkeys(meta["modes"], 0)
    for arch in meta["archs"]:
        means = {m: mean(select(runs, stream=stream, arch=arch, mode=m), "accuracy") for m in meta["modes"]}
        finite = {m: v for m, v in means.items() if math.isfinite(v)}
        if finite:
            wins[max(finite, key=finite.get)] += 1
    return wins


def _versus(result: dict, a: str, b: str) -> tuple[list[str], list[str], int]:
    """(pairs where mode a's mean accuracy beats b's by more than both stds, pairs where it loses so,
    the number of pairs compared)."""
    meta, runs = result["meta"], result["runs"]
    won, lost, n = [], [], 0
    for stream in meta["streams"]:
        for arch in meta["archs"]:
            ma, sa, ka = stats(select(runs, stream=stream, arch=arch, mode=a), "accuracy")
            mb, sb, kb = stats(select(runs, stream=stream, arch=arch, mode=b), "accuracy")
            if not (ka and kb):
                continue
            n += 1
            margin = max(sa, sb)
            if ma - mb > margin:
                won.append(f"{arch}/{stream} ({ma:.2f} vs {mb:.2f})")
            elif mb - ma > margin:
                lost.append(f"{arch}/{stream} ({ma:.2f} vs {mb:.2f})")
    return won, lost, n


def conclusions(result: dict) -> list[str]:
    """Plain statements computed from the runs."""
    meta, runs = result["meta"], result["runs"]
    modes, out = meta["modes"], []
    for stream in meta["streams"]:
        wins = {m: k for m, k in _best_counts(result, stream).items() if k}
        out.append(f"**{stream}**: the most accurate mode per network was "
                   + ", ".join(f"{m} ({k} of {len(meta['archs'])})" for m, k in sorted(wins.items(), key=lambda kv: -kv[1]))
                   + ".")
    for a, b in GAP_PAIRS:
        if a in modes and b in modes:
            won, lost, n = _versus(result, a, b)
            text = (f"Gap-mode tweening against the chain rule on the same schedule: {a} beat {b} on {len(won)} "
                    f"of {n} network/stream pairs and lost on {len(lost)} (a difference counts when it exceeds "
                    f"both standard deviations).")
            if won:
                text += " It won on " + "; ".join(won) + "."
            out.append(text)
    if "NormalBP" in modes:
        nb = select(runs, mode="NormalBP")
        others = [m for m in modes if m != "NormalBP"]
        other_av = min(mean(select(runs, mode=m), "availability") for m in others) if others else math.nan
        out.append(f"NormalBP answered {mean(nb, 'availability'):.1%} of ticks on average (its training bursts "
                   f"block), the per-tick modes at least {other_av:.1%}; its accuracy over the last window was "
                   f"{mean(nb, 'final_accuracy'):.2f} against {mean(nb, 'accuracy'):.2f} over the whole "
                   f"stream (it learns only in bursts, and counts missed ticks as wrong).")
    abrupt = select(runs, stream="abrupt")
    if abrupt:
        parts = []
        for m in modes:
            rows = select(abrupt, mode=m)
            rec = [r["recovery_ticks"] for r in rows if r.get("recovery_ticks") is not None]
            dips = [r["dip"] for r in rows if r.get("dip") is not None]
            never = len(rows) - len(rec)
            parts.append(f"{m}: median {np.median(rec):.0f} ticks" if rec else f"{m}: never")
            parts[-1] += (f", {never} of {len(rows)} runs never recovered" if never and rec else "")
            parts[-1] += f", lowest windowed accuracy {min(dips):.2f}" if dips else ""
        out.append("After the abrupt change (recovery: back within "
                   f"{RECOVERY_TOLERANCE * 100:.0f} points of the accuracy before it) — " + "; ".join(parts) + ".")
    noisy, clean = select(runs, stream="noisy"), select(runs, stream="stationary")
    if noisy and clean:
        parts = [f"{m} {mean(select(noisy, mode=m), 'accuracy'):.2f} vs {mean(select(clean, mode=m), 'accuracy'):.2f}"
                 for m in modes]
        out.append("Accuracy with noisy labels against the clean stream (mean over networks and seeds): "
                   + "; ".join(parts) + ".")
    grid = select(runs, stream="grid")
    if grid:
        goals = {m: mean(select(grid, mode=m), "goals_per_1000") for m in modes}
        best = max(goals, key=lambda m: goals[m] if math.isfinite(goals[m]) else -1)
        bumps = {m: mean(select(grid, mode=m), "collisions_per_1000") for m in modes}
        out.append("Grid agents reached " + "; ".join(f"{m} {v:.1f}" for m, v in goals.items())
                   + f" goals per 1000 ticks (mean over networks and seeds); {best} the most. Moves refused "
                   "(into a wall or another agent) per 1000 ticks: " + "; ".join(f"{m} {v:.0f}" for m, v in bumps.items())
                   + ".")
    diverged = [r for r in runs if r.get("diverged_at") is not None]
    if diverged:
        by_mode: dict[str, set] = {}
        for r in diverged:
            by_mode.setdefault(r["mode"], set()).add(r["arch"])
        out.append(f"{len(diverged)} of {len(runs)} runs diverged (a non-finite loss): "
                   + "; ".join(f"{m} on {', '.join(sorted(a))}" for m, a in by_mode.items()) + ".")
    else:
        out.append(f"None of the {len(runs)} runs diverged.")
    return out


def markdown(result: dict, command: str) -> str:
    """The whole page."""
    meta, runs = result["meta"], result["runs"]
    lines = [
        "# Online learning: the assessment",
        "",
        "Generated by `loom bench online` (loom/nn/online/assessment.py); nothing on this page is typed in "
        "by hand. What the modes, streams and metrics are: [tween.md](tween.md) and the docstrings of "
        "`loom.nn.online`. Rerun to regenerate:",
        "",
        "```text",
        command,
        "```",
        "",
        f"- date: {meta['date']}; loom {meta['loom']}; device: {meta['device']} ({meta['mode']} mode); "
        f"machine: {meta['machine']}",
        f"- {len(runs)} runs: {len(meta['archs'])} networks x {len(meta['streams'])} streams x "
        f"{len(meta['modes'])} modes x {meta['seeds']} seeds, {meta['ticks']} ticks each, one tick every "
        f"{meta['period_ms']:g} ms, answers due within the tick",
        "- accuracy: right answers in time / ticks (a late or missing answer counts as wrong); mean ± sample "
        "standard deviation over seeds (seed s: network initialization and stream)",
        "- availability, tick time and latency are wall-clock measurements on the machine above; accuracy, "
        "loss and recovery do not depend on timing, except on the grid, whose agents stand still on an "
        "unanswered tick",
        "",
        "## Conclusions",
        "",
        *[f"- {c}" for c in conclusions(result)],
        "",
    ]
    for stream in meta["streams"]:
        lines += [f"## Accuracy: {stream}", "", *_grid(result, stream, "accuracy", best="max"), ""]
    if "abrupt" in meta["streams"]:
        lines += ["## Recovery after the abrupt change (ticks)", "",
                  "Ticks from the change until accuracy over the latest 100 ticks is back within "
                  f"{RECOVERY_TOLERANCE * 100:.0f} points of the 100 ticks before it; \"(k/n)\": only k of n runs "
                  "recovered.", "", *_grid(result, "abrupt", "recovery_ticks", 0, best="min"), "",
                  "Lowest windowed accuracy after the change, before recovery:", "",
                  *_grid(result, "abrupt", "dip", best="max"), ""]
    if "grid" in meta["streams"]:
        lines += ["## Grid agents: goals reached per 1000 ticks", "",
                  *_grid(result, "grid", "goals_per_1000", 1, best="max"), ""]
    lines += ["## Real-time cost", "", "Mean over every network and stream of availability, compute time per "
              "tick (answer + learning, bursts included) and the 99th percentile of decision latency "
              "(arrival of an input to its answer; the pipelined modes answer an input several ticks later).", "",
              _row(["mode", "availability", "tick ms", "latency p99 ms"]), _row(["---"] * 4)]
    for m in meta["modes"]:
        rows = select(runs, mode=m)
        lines.append(_row([m, cell(rows, "availability", 3), cell(rows, "tick_ms", 3), cell(rows, "latency_ms_p99", 2)]))
    lines += ["", "## Settings", "", "Each mode's settings (`loom.nn.online.DEFAULTS`):", "", "```text",
              json.dumps(meta["settings"], indent=1), "```", ""]
    return "\n".join(lines)

