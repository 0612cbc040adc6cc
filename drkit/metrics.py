"""Evaluation metrics. Inputs are arrays of shape (n,) or (n, k) (k targets, scored per column).

- rank accuracy: fraction of same-side pairs with delta_ab > 0 (paper Sec. 4.3)
- ICC(3,1): Shrout & Fleiss (1979) two-way mixed, consistency, single rater, with the
  prediction and the label as the two "raters" (the FERA 2015 measure)
- PCC: Pearson correlation; CCC: Lin's concordance correlation; MSE; MAE
"""

from __future__ import annotations

import numpy as np


def _cols(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y[:, None] if y.ndim == 1 else y


def rank_accuracy(delta) -> float:
    delta = np.asarray(delta)
    return float((delta > 0).mean()) if delta.size else float("nan")


def icc31_ratings(Y) -> float:
    """ICC(3,1) of an (n targets x k raters) matrix: (BMS - EMS) / (BMS + (k-1) EMS), with BMS
    the between-targets mean square and EMS the residual mean square of the two-way ANOVA."""
    Y = np.asarray(Y, np.float64)
    n, k = Y.shape
    gm = Y.mean()
    ss_rows = k * ((Y.mean(1) - gm) ** 2).sum()
    ss_cols = n * ((Y.mean(0) - gm) ** 2).sum()
    ss_err = ((Y - gm) ** 2).sum() - ss_rows - ss_cols
    bms, ems = ss_rows / (n - 1), ss_err / ((n - 1) * (k - 1))
    den = bms + (k - 1) * ems
    return float((bms - ems) / den) if den > 0 else float("nan")


def icc31(pred, true) -> np.ndarray:
    """ICC(3,1) per column, the prediction and the label being the k = 2 raters."""
    p, t = _cols(pred), _cols(true)
    return np.array([icc31_ratings(np.stack([p[:, j], t[:, j]], 1)) for j in range(p.shape[1])])


def pcc(pred, true) -> np.ndarray:
    p, t = _cols(pred), _cols(true)
    pc, tc = p - p.mean(0), t - t.mean(0)
    den = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pc * tc).sum(0) / den, np.nan)


def ccc(pred, true) -> np.ndarray:
    p, t = _cols(pred), _cols(true)
    cov = ((p - p.mean(0)) * (t - t.mean(0))).mean(0)
    den = p.var(0) + t.var(0) + (p.mean(0) - t.mean(0)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * cov / den, np.nan)


def mse(pred, true) -> np.ndarray:
    return ((_cols(pred) - _cols(true)) ** 2).mean(0)


def mae(pred, true) -> np.ndarray:
    return np.abs(_cols(pred) - _cols(true)).mean(0)
