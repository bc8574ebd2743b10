"""The bootstrap interval of a realized metric, in bounded memory, on sufficient statistics.

A percentile bootstrap resamples the n labelled rows with replacement, B times. Every metric
here depends on a resample only through how many times each distinct *cell* occurs, a cell
being the values the metric reads from a row:

    accuracy               is the prediction right                      (2 cells)
    f1 (two classes)       predicted positive, truly positive           (4 cells)
    f1 (macro)             (truth, prediction)                          (<= classes^2 cells)
    roc_auc (two classes)  (positive-class score, truly positive)
    average_precision      (positive-class score, truly positive)
    log_loss               the row's loss, -log p(truth)
    mae / rmse             |error| / error^2
    r2                     (error^2, truth)
    anything else          (truth, class probabilities), scored by scikit-learn

So a resample is a vector of K cell counts drawn from Multinomial(n, n_cell / n): exactly
the row bootstrap, summed by cell, hence the same interval (same confidence, same seed gives
the same answer). Two exact ways to draw it, chosen by K:

- few cells (20 K <= n: classification labels, a tree model's few distinct scores): numpy's
  multinomial over the cells, O(K) per resample whatever the number of rows;
- many cells (continuous scores or errors): n row indices per resample (``integers``), mapped
  to their cells and counted (``bincount``), O(n) time per resample, no n x B matrix.

ROC AUC and the mean losses (log loss, MAE, RMSE) with many distinct values first merge their
cells into groups of consecutive values (min(1024, n/40) groups, at least 16: a window of
1,000 rows gets 25) and put back what the merge hides (see ``_grouped``), so they take the
first way.

Resamples are drawn and scored in chunks of at most ``BUDGET`` numbers, so memory is
O(n + K + BUDGET), never rows x resamples. (The previous code drew the dense rows x
resamples multinomial matrix: 12.3 GB for 800k rows.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

BUDGET = 1 << 20  # numbers per chunk of resamples (8 MiB per float64 array)
GROUPS = 1024  # above this many cells, ROC AUC and mean losses resample groups of cells
MIN_GROUPS = 16  # a small window (1,000 rows) gets n/40 groups, at least this many
Scorer = Callable[[Any], Any]  # (resamples x cells) counts -> one value per resample


@dataclass(frozen=True)
class Statistic:
    """What a metric reads from each row (``keys``, rows x columns) and how to score cell
    counts given the distinct keys (``make``); computed once for all rows."""

    metric: str
    keys: Any
    make: Callable[[Any], Scorer]


def statistic(metric: str, o: Any) -> Statistic:
    """The metric's per-row keys for ``o`` (a performance.Outcomes)."""
    keys, make = _statistic(metric, o)
    keys = np.asarray(keys, dtype=np.float64)
    return Statistic(metric, keys.reshape(len(keys), -1) if keys.ndim < 2 else keys, make)


def percentile_interval(
    stat: Statistic,
    rows: Any | None,
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
    groups: int | None = None,
) -> tuple[float, float, float]:
    """(value, low, high): the metric on ``rows`` (None: all; exact) and its percentile
    bootstrap interval."""
    metric, make = stat.metric, stat.make
    cell_keys, counts, codes = unique_rows(stat.keys if rows is None else stat.keys[rows])
    if counts.size == 0:
        return math.nan, math.nan, math.nan
    if groups is None:  # few enough that drawing them costs less than drawing the rows
        groups = max(MIN_GROUPS, min(GROUPS, int(counts.sum()) // 40))
    value = float(make(cell_keys)(counts[None, :].astype(np.float64))[0])
    grouped = _grouped(metric, cell_keys, counts, codes, groups)
    if grouped is not None:
        group_counts, group_codes, draw = grouped
        chunks = resample_counts(group_counts, group_codes, resamples, rng)
        values = np.concatenate([np.asarray(draw(w, rng), dtype=float) for w in chunks])
    else:
        score = make(cell_keys)
        chunks = resample_counts(counts, codes, resamples, rng)
        values = np.concatenate([np.asarray(score(w), dtype=float) for w in chunks])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return value, math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return value, float(low), float(high)


def _grouped(
    metric: str, cells: Any, counts: Any, codes: Any, groups: int
) -> tuple[Any, Any, Callable[[Any, np.random.Generator], Any]] | None:
    """ROC AUC and mean losses on groups of consecutive cells (sorted by their first key):
    one group per distinct key when there are at most ``groups`` of them (exact), else
    about ``groups`` groups of about equal rows (equal keys stay in one group; a mean's groups
    also split at equal steps of the value) with what the merge hides put back. Returns
    (rows per group cell, group cell of each row, scorer), or None for a metric without a
    grouped form (it takes the exact cell path)."""
    binary_auc = metric == "roc_auc" and cells.shape[1] == 2
    if not (binary_auc or (metric in ("mae", "rmse", "log_loss") and cells.shape[1] == 1)):
        return None
    n = int(counts.sum())
    s = cells[:, 0]
    starts = runs(s)[0]  # the first cell with the same key
    distinct = np.zeros(s.size, dtype=bool)
    distinct[starts] = True
    if int(distinct.sum()) <= groups:  # one group per distinct key
        group = np.cumsum(distinct) - 1
    else:
        before = np.concatenate([[0], np.cumsum(counts)])  # rows before each cell
        group = (before[starts] * groups) // n  # about equal rows per group
        if not binary_auc:
            # a mean's skew lives in its tail, where equal-row groups are wide: split them
            # also at equal steps of the value, so no group spans more than 1/groups of
            # the range (lo*(1-t) + hi*t cannot overflow)
            lo, hi = float(s[0]), float(s[-1])
            t = np.linspace(0.0, 1.0, groups + 1)[1:-1]
            step = np.searchsorted(lo * (1 - t) + hi * t, s[starts], side="right")
            group = group * (groups + 1) + step
        group = np.unique(group, return_inverse=True)[1]
    g = int(group.max()) + 1
    if binary_auc:
        pos = cells[:, 1] > 0
        both, auc = _grouped_auc(s, pos, counts, group, g)
        return both, (group + g * ~pos)[codes], auc
    v = s
    rows = np.bincount(group, counts, minlength=g)
    mean = np.bincount(group, counts * v, minlength=g) / rows
    spread = np.bincount(group, counts * (v - mean[group]) ** 2, minlength=g) / rows
    root = metric == "rmse"

    def draw(w: Any, rng: np.random.Generator) -> Any:
        # given a group's resampled count N, its sum has mean N * mean and variance
        # N * spread; the spread (0 for one key per group) comes back as a normal term
        total = w.sum(axis=1)
        noise = np.sqrt(w @ spread) * rng.standard_normal(w.shape[0])
        out = (w @ mean + noise) / total
        return np.sqrt(np.maximum(out, 0.0)) if root else out

    return rows.astype(np.int64), group[codes], draw


def _grouped_auc(
    s: Any, pos: Any, counts: Any, group: Any, g: int
) -> tuple[Any, Callable[[Any, np.random.Generator], Any]]:
    """ROC AUC over groups: a positive beats every negative of a lower group, and the pairs
    inside a group count at the share of them the data orders right (ties half; with one
    score per group every pair inside is a tie, so this is exact)."""
    p_rows, n_rows = counts * pos, counts * ~pos
    cum_n = np.concatenate([[0.0], np.cumsum(n_rows)])
    starts, ends = runs(s)
    first = runs(group)[0]  # the group's first cell
    below = cum_n[starts] - cum_n[first]  # negatives of the same group strictly below
    tied = cum_n[ends] - cum_n[starts]
    concordant = np.bincount(group, p_rows * (below + 0.5 * tied), minlength=g)
    pg = np.bincount(group, p_rows, minlength=g)
    ng = np.bincount(group, n_rows, minlength=g)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.nan_to_num(concordant / (pg * ng))
    both = np.concatenate([pg, ng]).astype(np.int64)  # cells: (group, positive) then negative

    def draw(w: Any, rng: np.random.Generator) -> Any:
        del rng  # nothing random beyond the counts
        wp, wn = w[:, :g], w[:, g:]
        lower = np.cumsum(wn, axis=1) - wn  # negatives in lower groups
        num = (wp * (lower + wn * rate)).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den

    return both, draw


def unique_rows(keys: Any) -> tuple[Any, Any, Any]:
    """(cell keys sorted by column 0 then 1..., rows per cell, cell of each row)."""
    keys = np.asarray(keys, dtype=np.float64)
    keys = keys.reshape(len(keys), -1) if keys.ndim < 2 else keys
    n = keys.shape[0]
    if n == 0:
        return keys, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.arange(n)
    for column in keys.T[::-1]:  # stable sorts, the primary key last
        order = order[np.argsort(column[order], kind="stable")]
    ordered = keys[order]
    new = np.ones(n, dtype=bool)
    # NaN != NaN: every NaN row is its own cell, which is still exact
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    cell_of_sorted = np.cumsum(new) - 1
    codes = np.empty(n, dtype=np.int64)
    codes[order] = cell_of_sorted
    counts = np.bincount(cell_of_sorted)
    return ordered[new], counts, codes


def resample_counts(
    counts: Any, codes: Any | None, resamples: int, rng: np.random.Generator
) -> Iterator[Any]:
    """Chunks of (resamples x cells) counts, each row Multinomial(n, counts / n); ``codes``
    (the cell of each row) lets many cells be drawn row by row instead."""
    n, k = int(counts.sum()), int(counts.size)
    if n == 0:
        return
    if 20 * k <= n or codes is None:  # a binomial per cell costs about 20 row draws
        p = counts / n
        chunk = max(1, BUDGET // k)
        for start in range(0, resamples, chunk):
            m = min(chunk, resamples - start)
            yield rng.multinomial(n, p, size=m).astype(np.float64)
        return
    chunk = max(1, BUDGET // n)
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        small = np.int32 if m * k < 2**31 else np.int64  # half the memory traffic
        cells = codes.astype(small, copy=False)[rng.integers(0, n, size=(m, n), dtype=small)]
        cells += (np.arange(m, dtype=small) * k)[:, None]
        yield np.bincount(cells.ravel(), minlength=m * k).reshape(m, k).astype(np.float64)


def runs(s: Any) -> tuple[Any, Any]:
    """For sorted ``s``: the index of the first and one past the last element equal to each
    element (``searchsorted`` left and right, in one linear pass)."""
    n = s.size
    new = np.ones(n, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    first = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    bounds = np.append(first, n)
    return bounds[run], bounds[run + 1]


def _statistic(metric: str, o: Any) -> tuple[Any, Callable[[Any], Scorer]]:
    """The per-row keys the metric reads, and how to score cell counts from cell keys."""
    if metric in ("rmse", "mae", "r2"):
        y = np.asarray(o.y_true, float)
        err = np.asarray(o.y_pred, float) - y
        if metric == "mae":
            return np.abs(err), _mean_of(0, root=False)
        if metric == "rmse":
            return err**2, _mean_of(0, root=True)
        return np.c_[err**2, y], _r2
    truth = np.asarray(o.y_true).astype(str)
    pred = np.asarray(o.y_pred).astype(str)
    if metric == "accuracy":
        return (truth == pred).astype(float), _mean_of(0, root=False)
    binary = o.classes is not None and len(o.classes) == 2
    if metric == "f1" and binary:
        positive = o.classes[1]
        return np.c_[pred == positive, truth == positive].astype(float), _binary_f1
    if metric in ("roc_auc", "average_precision") and binary and o.proba is not None:
        score = np.asarray(o.proba, float)[:, 1]
        keys = np.c_[score, truth == o.classes[1]]
        return keys, _binary_auc if metric == "roc_auc" else _average_precision
    labels = sorted(set(o.classes or []) | set(np.unique(truth)) | set(np.unique(pred)))
    known = np.asarray(labels, dtype=str)
    t_code = np.searchsorted(known, truth).astype(float)
    if metric == "log_loss" and o.proba is not None:
        classes = np.asarray(o.classes or [], dtype=str)
        by_name = np.argsort(classes, kind="stable")
        at = np.minimum(np.searchsorted(classes[by_name], truth), max(classes.size - 1, 0))
        found = classes.size > 0 and classes[by_name][at] == truth
        cols = np.where(found, by_name[at] if classes.size else 0, -1)
        proba = np.asarray(o.proba, float)
        p = np.where(cols >= 0, proba[np.arange(len(cols)), np.maximum(cols, 0)], 0.0)
        eps = np.finfo(np.float64).eps
        return -np.log(np.clip(p, eps, 1.0)), _mean_of(0, root=False)
    if metric == "f1":
        p_code = np.searchsorted(known, pred).astype(float)
        return np.c_[t_code, p_code], lambda cells: _macro_f1(cells, len(labels))
    # anything else: scikit-learn on the cells, with the counts as sample weights
    extra = np.asarray(o.proba, float) if o.proba is not None else np.zeros((len(truth), 0))
    return np.c_[t_code, extra], lambda cells: _sklearn_cells(metric, o, labels, cells)


def _mean_of(column: int, *, root: bool) -> Callable[[Any], Scorer]:
    def make(cells: Any) -> Scorer:
        v = cells[:, column]

        def score(w: Any) -> Any:
            mean = (w @ v) / w.sum(axis=1)
            return np.sqrt(mean) if root else mean

        return score

    return make


def _r2(cells: Any) -> Scorer:
    e2, y = cells[:, 0], cells[:, 1]

    def score(w: Any) -> Any:
        total = w.sum(axis=1)
        mean = (w @ y) / total
        sst = w @ y**2 - total * mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - (w @ e2) / sst

    return score


def _binary_f1(cells: Any) -> Scorer:
    pp, tp_ = cells[:, 0] > 0, cells[:, 1] > 0
    tp_v, fp_v, fn_v = ((pp & tp_) * 1.0, (pp & ~tp_) * 1.0, (~pp & tp_) * 1.0)

    def score(w: Any) -> Any:
        tp, fp, fn = w @ tp_v, w @ fp_v, w @ fn_v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(2 * tp / (2 * tp + fp + fn))

    return score


def _macro_f1(cells: Any, labels: int) -> Scorer:
    """scikit-learn's macro F1 (zero_division=0) over the labels present in the resample."""
    t = cells[:, 0].astype(np.int64)
    p = cells[:, 1].astype(np.int64)
    eye = np.eye(labels, dtype=float)
    is_t, is_p = eye[t], eye[p]  # cells x labels
    tp_m, fp_m, fn_m = is_t * is_p, is_p * (1 - is_t), is_t * (1 - is_p)
    present_m = np.maximum(is_t, is_p)

    def score(w: Any) -> Any:
        tp, fp, fn = w @ tp_m, w @ fp_m, w @ fn_m
        present = (w @ present_m) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(present, np.nan_to_num(2 * tp / (2 * tp + fp + fn)), 0.0)
        return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    return score


def _binary_auc(cells: Any) -> Scorer:
    """ROC AUC from counts of (score, positive) cells sorted by score: P(pos > neg) + ties/2."""
    s, pos = cells[:, 0], cells[:, 1] > 0
    starts, ends = runs(s)

    def score(w: Any) -> Any:
        wp, wn = w * pos, w * ~pos
        cum_n = np.zeros((w.shape[0], w.shape[1] + 1))
        np.cumsum(wn, axis=1, out=cum_n[:, 1:])
        below = cum_n[:, starts]
        tied = cum_n[:, ends] - below
        num = (wp * (below + 0.5 * tied)).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den

    return score


def _average_precision(cells: Any) -> Scorer:
    """scikit-learn's average precision: over distinct scores, the recall step (positives at
    that score) times the precision of the rows scoring at least that much."""
    s, pos = cells[:, 0], cells[:, 1] > 0
    starts = runs(s)[0]  # cells from here on score >= s

    def score(w: Any) -> Any:
        wp, wn = w * pos, w * ~pos
        cum_p = np.zeros((w.shape[0], w.shape[1] + 1))
        cum_n = np.zeros((w.shape[0], w.shape[1] + 1))
        np.cumsum(wp, axis=1, out=cum_p[:, 1:])
        np.cumsum(wn, axis=1, out=cum_n[:, 1:])
        tps = cum_p[:, -1:] - cum_p[:, starts]
        fps = cum_n[:, -1:] - cum_n[:, starts]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.nan_to_num(tps / (tps + fps))
            return (wp * precision).sum(axis=1) / cum_p[:, -1]

    return score


def _sklearn_cells(metric: str, o: Any, labels: list[str], cells: Any) -> Scorer:
    from driftloop.monitoring.performance import Outcomes, _sklearn_metric

    truth = np.asarray(labels, dtype=object)[cells[:, 0].astype(np.int64)].astype(str)
    proba = cells[:, 1:] if o.proba is not None else None
    k = cells.shape[0]
    pred = truth  # the metrics that reach here read truth and probabilities only
    sub = Outcomes(truth, pred, proba, o.classes, np.zeros(k, dtype=int), ["all"])

    def score(w: Any) -> Any:
        return np.array([_sklearn_metric(metric, sub, row) for row in w])

    return score
