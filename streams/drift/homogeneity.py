"""Has a window's distribution moved from the baseline's? A G-test, Holm's correction, an effect floor.

Pure numpy/scipy. `compare_window` is what the drift agent runs on every closed window: the
window's label counts, confidence histogram and entropy histogram (a `WindowSummary`) are each
compared with the baseline's.

**Why a test *and* an effect floor.** A divergence alone (`streams.drift.divergence`) has a noise
floor that shrinks with window size (about (K-1)/(8n) nats for JS), so a fixed threshold alarms on
noise in small windows and stays silent in large ones only by luck. A test alone has the opposite
failure: in a window of a million messages a 0.5-point shift is "significant" and meaningless. A
window therefore drifts when both hold: the G-test of homogeneity rejects (p < alpha, accounting for
the sizes of window *and* baseline) and the JS divergence exceeds `min_effect` (a change worth a
human's look). In small windows the test suppresses noise alarms; in huge windows the floor
suppresses trivial ones; the verdict for a real shift above the floor does not depend on window size
except through power.

**False alarms.** Three families are tested per window; Holm's step-down correction keeps the chance
that *any* of them alarms on a stationary window at or below `alpha` (valid under any dependence, and
the histograms of confidence and entropy are strongly dependent). The effect floor only removes
rejections, so it cannot raise that rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import chdtrc, rel_entr

from streams.drift.divergence import effect_size
from streams.drift.summary import WindowSummary


def _pool_sparse(table: np.ndarray, min_expected: float) -> np.ndarray:
    """Pool the columns whose expected count in the smaller row is below min_expected.

    The chi-square approximation of G is anti-conservative in sparse cells (too many small p-values,
    i.e. false alarms); pooling them into one column is the usual remedy. If the pooled column is
    still sparse it is folded into the smallest remaining column.
    """
    cols = table.sum(axis=0)
    expected = table.sum(axis=1).min() * cols / cols.sum()
    small = expected < min_expected
    if not small.any():
        return table
    pooled = table[:, small].sum(axis=1)
    kept = table[:, ~small]
    if kept.shape[1] and expected[small].sum() < min_expected:
        kept = kept.copy()
        kept[:, int(np.argmin(kept.sum(axis=0)))] += pooled
        return kept
    return np.column_stack([kept, pooled])


def g_test(window_counts: npt.ArrayLike, baseline_counts: npt.ArrayLike,
           min_expected: float = 5.0) -> tuple[float, int, float]:
    """G-test of homogeneity of two count vectors: (G, degrees of freedom, p-value).

    Both rows are samples, so the baseline's own sampling error is accounted for, and the p-value
    scales with the window size. The same statistic as `scipy.stats.chi2_contingency(table,
    correction=False, lambda_="log-likelihood")` (the tests pin it), computed with its scipy.special
    primitives because the stats wrapper's overhead would be paid by every window of every task.
    Columns empty in both rows are dropped and sparse ones pooled; with fewer than two columns left
    (or an empty row) there is nothing to test and p = 1.

    Parameters
    ----------
    window_counts, baseline_counts
        Count vectors over the same categories or bins.
    min_expected
        Columns whose expected count in the smaller row is below this are pooled.

    Examples
    --------
    >>> g, dof, p = g_test([80, 120], [6000, 4000])
    >>> round(g, 2), dof, f"{p:.1e}"
    (31.78, 1, '1.7e-08')
    >>> g_test([5, 0], [50, 0])  # one category: nothing to test
    (0.0, 0, 1.0)
    """
    table = np.array((window_counts, baseline_counts), dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or rows.min() <= 0:
        return 0.0, 0, 1.0
    table = _pool_sparse(table, min_expected)
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    g = 2.0 * float(rel_entr(table, expected).sum())
    dof = table.shape[1] - 1
    return g, dof, float(chdtrc(dof, g))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: reject H_i when adjusted p_i < alpha; FWER <= alpha, any dependence.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = [float(x) for x in p_values]
    m = len(p)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=p.__getitem__)):  # a few values: plain Python is cheapest
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return np.asarray(out)


@dataclass(frozen=True)
class DriftTest:
    """When a window counts as drifted: p < alpha (family-wise over a window's tests) and JS > min_effect.

    alpha = 1e-4 since the sequential CUSUMs run beside the window test (`streams.drift.sequential`):
    one false-alarm budget of 1 per 1000 windows is shared by every check, and the window test is left
    for abrupt shifts, where it has power to spare (a 20-point label shift in a 500-message window has
    p < 1e-15). `bench/drift_eval.py` on seeds from 1,000,000: at alpha = 5e-4 the window test alone
    used 0.4-0.5 false episodes per 1000 windows, at 1e-4 about 0.1, and the abrupt shift still
    alarmed within its first window in every run (figures in bench/README.md, "Drift detection").
    min_effect = 0.005 bits of JS is set by reasoning, not tuned: about an 8-point shift of a
    balanced binary prior (a 20-point shift is 0.029 bits), so the shifts the service promises to
    catch clear it while sub-point shifts in huge windows do not.
    """

    alpha: float = 1e-4
    min_effect: float = 0.005  # JS divergence, bits
    smoothing: float = 0.5  # additive pseudo-count for the effect size (Jeffreys)
    min_expected: float = 5.0  # sparse-column pooling for the G-test

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "min_effect": self.min_effect, "smoothing": self.smoothing,
                "min_expected": self.min_expected}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftTest:
        return cls(**d)


@dataclass(frozen=True)
class DriftVerdict:
    statistic: str  # what `value` and `threshold` measure: "js" (traffic) or "canary_kl" (canaries)
    value: float  # effect size of the window against the baseline
    threshold: float  # min_effect: the value must exceed it
    p_value: float | None  # G-test p-value (Holm-adjusted in compare_window); None when there is none
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "value": self.value, "threshold": self.threshold,
                "p_value": self.p_value, "drifted": self.drifted}


def _verdict(window_counts: npt.ArrayLike, baseline_counts: npt.ArrayLike, config: DriftTest,
             p_value: float) -> DriftVerdict:
    value = effect_size(window_counts, baseline_counts, config.smoothing)
    return DriftVerdict("js", value, config.min_effect, p_value,
                        bool(p_value < config.alpha and value > config.min_effect))


def compare(window_counts: npt.ArrayLike, baseline_counts: npt.ArrayLike,
            config: DriftTest = DriftTest()) -> DriftVerdict:
    """One count vector against the baseline's, at level config.alpha (no multiplicity correction)."""
    p_value = g_test(window_counts, baseline_counts, config.min_expected)[2]
    return _verdict(window_counts, baseline_counts, config, p_value)


FAMILIES = ("labels", "confidence", "entropy")


@dataclass(frozen=True)
class WindowVerdict:
    """Per-family verdicts of one window; p-values are Holm-adjusted over the families."""

    verdicts: dict[str, DriftVerdict] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(v.drifted for v in self.verdicts.values())

    def strongest(self) -> tuple[str, DriftVerdict]:
        """The family to report: the drifted one with the smallest p (else the smallest p overall)."""
        return min(self.verdicts.items(), key=lambda kv: (not kv[1].drifted, kv[1].p_value, -kv[1].value))


def compare_window(window: WindowSummary, baseline: WindowSummary, config: DriftTest = DriftTest()) -> WindowVerdict:
    """Labels, confidence and entropy histograms of a window against the baseline, Holm over the three.

    The drift agent's verdict on every closed window: each family drifts when its Holm-adjusted
    G-test p-value is below `config.alpha` and its JS divergence exceeds `config.min_effect`; the
    window drifts when any family does.

    Parameters
    ----------
    window
        The closed window's summary.
    baseline
        The baseline's summary (same labels and bins).
    config
        Level and effect floor (`DriftTest`; the task's `drift.alpha` and `drift.min_effect`).

    Examples
    --------
    >>> import numpy as np
    >>> from streams.drift.summary import WindowSummary
    >>> def summary(labels, confidence, entropy):
    ...     s = WindowSummary.empty(n_labels=2, bins=4)
    ...     ones = np.ones(len(labels))
    ...     s.add_many(np.array(labels), np.array(confidence), np.array(entropy), ones, -ones)
    ...     return s
    >>> baseline = summary([0] * 600 + [1] * 400, [0.9] * 1000, [0.4] * 1000)
    >>> window = summary([0] * 60 + [1] * 140, [0.9] * 200, [0.4] * 200)  # 60/40 -> 30/70
    >>> verdict = compare_window(window, baseline)
    >>> verdict.drifted, verdict.strongest()[0]
    (True, 'labels')
    >>> labels = verdict.verdicts["labels"]
    >>> labels.statistic, round(labels.value, 3), labels.p_value < 1e-10
    ('js', 0.066, True)
    >>> verdict.verdicts["confidence"].drifted  # nothing moved there
    False
    """
    pairs = [(window.label_counts, baseline.label_counts), (window.confidence_hist, baseline.confidence_hist),
             (window.entropy_hist, baseline.entropy_hist)]
    adjusted = holm([g_test(w, b, config.min_expected)[2] for w, b in pairs])
    return WindowVerdict({name: _verdict(w, b, config, float(p))
                          for name, (w, b), p in zip(FAMILIES, pairs, adjusted, strict=True)})
