"""Metrics of an online run, from its per-tick records (harness.run):

  output     the learner produced an answer this tick (False while a pipeline fills)
  answered   ... and it was ready within the deadline
  correct    the answer's fraction of right decisions (one per agent) against the true label
  latency    seconds from the answered input's arrival to its answer (pipelines: several ticks)
  work       seconds the learner spent on the tick (answer + learning, a burst included)
  loss       the loss of the answer against the true label (diverged_at: the first tick where it is
             not finite, None when it always is)

Accuracy counts what a real-time user gets: a right answer in time. A tick without one (late, or
no answer yet) counts as wrong; `answered_accuracy` is the accuracy of the answers alone.
Recovery after a task change at tick c: `pre` is the accuracy over the window before c; recovery is
the number of ticks from c until the accuracy over the latest `window` ticks (all after c) is back
within RECOVERY_TOLERANCE of pre (at least `window` ticks by construction; None when it never is);
`dip` is the lowest such windowed accuracy after c until then.
"""
from __future__ import annotations

import numpy as np

RECOVERY_TOLERANCE = 0.05


def _effective(rec: dict) -> np.ndarray:
    return np.where(rec["answered"], rec["correct"], 0.0)


def _nanmean(a: np.ndarray) -> float | None:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else None


def _ms(a: np.ndarray, q: float) -> float | None:
    a = a[~np.isnan(a)]
    return float(np.percentile(a, q) * 1e3) if a.size else None


def _slice(rec: dict, lo: int, hi: int) -> dict:
    acc = _effective(rec)[lo:hi]
    out, answered = rec["output"][lo:hi], rec["answered"][lo:hi]
    return {"accuracy": float(acc.mean()),
            "answered_accuracy": float(rec["correct"][lo:hi][answered].mean()) if answered.any() else None,
            "availability": float(answered.mean()),
            "loss": _nanmean(np.where(out, rec["loss"][lo:hi], np.nan)),
            "latency_ms_p50": _ms(rec["latency"][lo:hi], 50),
            "latency_ms_p99": _ms(rec["latency"][lo:hi], 99)}


def windows(rec: dict, window: int) -> list[dict]:
    """Metrics of consecutive windows of `window` ticks (the last one may be shorter)."""
    n = len(rec["correct"])
    return [{"start": lo, **_slice(rec, lo, min(lo + window, n))} for lo in range(0, n, window)]


def recovery(acc: np.ndarray, change: int, window: int) -> tuple[int | None, float | None, float | None]:
    """(ticks to recover, dip, pre-change accuracy) for a change at tick `change` (see the module doc)."""
    if change < window or change + window > len(acc):
        return None, None, None
    pre = float(acc[change - window:change].mean())
    sums = np.cumsum(np.concatenate([[0.0], acc[change:]]))
    rolling = (sums[window:] - sums[:-window]) / window       # rolling[k]: ticks change+k .. change+k+window-1
    back = np.flatnonzero(rolling >= pre - RECOVERY_TOLERANCE)
    if back.size == 0:
        return None, float(rolling.min()), pre
    k = int(back[0])
    return k + window, float(rolling[:k + 1].min()), pre


def summarize(rec: dict, window: int, changes: tuple[int, ...]) -> dict:
    """The whole run's metrics, the last window's accuracy and, per task change, recovery and dip."""
    n = len(rec["correct"])
    out = _slice(rec, 0, n)
    out["final_accuracy"] = float(_effective(rec)[max(n - window, 0):].mean())
    out["tick_ms"] = float(rec["work"].mean() * 1e3)
    bad = np.flatnonzero(rec["output"] & ~np.isfinite(rec["loss"]))
    out["diverged_at"] = int(bad[0]) if bad.size else None
    for i, c in enumerate(changes):
        ticks, dip, pre = recovery(_effective(rec), c, window)
        suffix = "" if i == 0 else f"_{i}"
        out["recovery_ticks" + suffix], out["dip" + suffix], out["pre_change_accuracy" + suffix] = ticks, dip, pre
    return out
