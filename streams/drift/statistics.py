"""Drift statistics: window summaries, divergences, tests, sequential detectors, episodes, canaries.

Pure numpy/scipy, no Kafka. Every state here is a few numbers with `to_dict`/`from_dict`, so it can
live in a Faust table; the drift agent is wiring around these functions.

**What is compared.** A window (tumbling or hopping, per task and model) is summarised by a
`WindowSummary`: message count, label counts, histograms of confidence and of normalised entropy on
fixed bins over [0, 1], and sums for the means of entropy, label mass and chosen-token logprob. The
baseline is the `merge` of the summaries of a reference period. The current window's three count
vectors (labels, confidence, entropy) are each compared with the baseline's.

**Why a test *and* an effect floor.** A divergence alone (KL, JS, PSI) has a noise floor that shrinks
with window size (about (K-1)/(8n) nats for JS), so a fixed threshold alarms on noise in small windows
and stays silent in large ones only by luck. A test alone has the opposite failure: in a window of a
million messages a 0.5-point shift is "significant" and meaningless. A window therefore drifts when
both hold: the G-test of homogeneity rejects (p < alpha, accounting for the sizes of window *and*
baseline) and the effect size exceeds `min_effect` (a change worth a human's look). In small windows
the test suppresses noise alarms; in huge windows the floor suppresses trivial ones; the verdict for
a real shift above the floor does not depend on window size except through power.

**False alarms.** Three families are tested per window; Holm's step-down correction keeps the chance
that *any* of them alarms on a stationary window at or below `alpha` (valid under any dependence, and
the histograms of confidence and entropy are strongly dependent). The effect floor only removes
rejections, so it cannot raise that rate.

**Gradual shifts.** Each window test forgets the previous window, so a slow drift of the mean
entropy can stay under every per-window test. `Cusum` and `PageHinkley` accumulate evidence across
windows; they are fed the standardised shift of the window's mean entropy (`entropy_shift_z`) so that
their parameters are in standard-deviation units and `cusum_threshold` sets the alarm threshold for a
target in-control average run length (ARL0 = expected windows between false alarms).

**Alerts.** `EpisodeTracker` turns per-window verdicts into one "open" per drift episode and one
"recovered" when it ends. **Canaries** (fixed prompts sent to the model) catch model drift that
traffic cannot tell from data drift: `canary_kl` compares top-k token distributions, and
`compare_canaries` judges the score against the spread among repeated baseline samples.

`bench/drift_eval.py` runs this module on synthetic streams with known change points and prints
detection delays and false alarms per 1000 windows, next to river's ADWIN and Page-Hinkley.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import chdtrc, rel_entr

# ---------------------------------------------------------------------------------------------------
# Window summaries


def _bins(x: np.ndarray, bins: int) -> np.ndarray:
    """Bin indices of x in `bins` equal bins over [0, 1]: [lo, hi), the last closed, outside clipped.

    The same float product and truncation as `WindowSummary.add`, so batch and per-message agree.
    """
    return np.clip((np.asarray(x, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


@dataclass(eq=False, slots=True)
class WindowSummary:
    """Counts and sums for one window of one task and model; `merge` adds windows or partitions.

    Only messages that named a label are added (review items with a null label carry no
    distribution). Confidence and entropy are in [0, 1]; values outside are clipped into the end bins.
    The count arrays are updated in place (through cached memoryviews, twice as fast as numpy
    item assignment), so replace a summary rather than rebinding its arrays.
    """

    label_counts: np.ndarray  # int64, one per task label, in the task's label order
    confidence_hist: np.ndarray  # int64, equal bins over [0, 1]
    entropy_hist: np.ndarray  # int64, equal bins over [0, 1] (normalised entropy)
    n: int = 0
    entropy_sum: float = 0.0
    entropy_sumsq: float = 0.0  # for the per-message spread that standardises the sequential detectors
    label_mass_sum: float = 0.0
    chosen_logprob_sum: float = 0.0
    _views: tuple[Any, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("label_counts", "confidence_hist", "entropy_hist"):
            a = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            if a.ndim != 1 or a.shape[0] < 1:
                raise ValueError(f"{name} must be a non-empty vector, got shape {a.shape}")
            setattr(self, name, a)
        self._views = (memoryview(self.label_counts), memoryview(self.confidence_hist),
                       memoryview(self.entropy_hist), self.confidence_hist.shape[0], self.entropy_hist.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and deepcopy) through the JSON form: memoryviews cannot be pickled."""
        return (WindowSummary.from_dict, (self.to_dict(),))

    @classmethod
    def empty(cls, n_labels: int, bins: int = 10) -> WindowSummary:
        if n_labels < 1 or bins < 1:
            raise ValueError(f"need n_labels >= 1 and bins >= 1, got {n_labels}, {bins}")
        z = np.zeros
        return cls(z(n_labels, np.int64), z(bins, np.int64), z(bins, np.int64))

    def add(self, label_index: int, confidence: float, entropy: float, label_mass: float,
            chosen_logprob: float) -> None:
        """One message, O(1): three integer increments and four float sums, no allocation."""
        labels, conf, ent, cb, eb = self._views
        if label_index < 0:
            raise IndexError(f"label_index must be >= 0, got {label_index}")  # -1 would count the last label
        labels[label_index] += 1
        i = int(confidence * cb)
        conf[i if 0 <= i < cb else (0 if i < 0 else cb - 1)] += 1
        i = int(entropy * eb)
        ent[i if 0 <= i < eb else (0 if i < 0 else eb - 1)] += 1
        self.n += 1
        self.entropy_sum += entropy
        self.entropy_sumsq += entropy * entropy
        self.label_mass_sum += label_mass
        self.chosen_logprob_sum += chosen_logprob

    def add_many(self, label_index: np.ndarray, confidence: np.ndarray, entropy: np.ndarray,
                 label_mass: np.ndarray, chosen_logprob: np.ndarray) -> None:
        """A batch of messages (e.g. a `stream.take()` batch); equal to calling `add` for each."""
        li = np.asarray(label_index, dtype=np.int64)
        e = np.asarray(entropy, dtype=np.float64)
        self.n += int(li.shape[0])
        self.label_counts += np.bincount(li, minlength=self.label_counts.shape[0])
        self.confidence_hist += np.bincount(_bins(confidence, self.confidence_hist.shape[0]),
                                            minlength=self.confidence_hist.shape[0])
        self.entropy_hist += np.bincount(_bins(e, self.entropy_hist.shape[0]), minlength=self.entropy_hist.shape[0])
        self.entropy_sum += float(e.sum())
        self.entropy_sumsq += float(e @ e)
        self.label_mass_sum += float(np.sum(label_mass))
        self.chosen_logprob_sum += float(np.sum(chosen_logprob))

    def merge(self, other: WindowSummary) -> WindowSummary:
        """A new summary of both windows' messages (hopping windows, partitions, a baseline period)."""
        if (self.label_counts.shape != other.label_counts.shape
                or self.confidence_hist.shape != other.confidence_hist.shape
                or self.entropy_hist.shape != other.entropy_hist.shape):
            raise ValueError("cannot merge summaries with different labels or bins")
        return WindowSummary(
            self.label_counts + other.label_counts, self.confidence_hist + other.confidence_hist,
            self.entropy_hist + other.entropy_hist, self.n + other.n,
            self.entropy_sum + other.entropy_sum, self.entropy_sumsq + other.entropy_sumsq,
            self.label_mass_sum + other.label_mass_sum, self.chosen_logprob_sum + other.chosen_logprob_sum)

    def _mean(self, total: float) -> float:
        return total / self.n if self.n else math.nan

    @property
    def entropy_mean(self) -> float:
        return self._mean(self.entropy_sum)

    @property
    def entropy_std(self) -> float:
        """Per-message standard deviation of entropy (population form; NaN when empty)."""
        if not self.n:
            return math.nan
        return math.sqrt(max(self.entropy_sumsq / self.n - self.entropy_mean**2, 0.0))

    @property
    def label_mass_mean(self) -> float:
        return self._mean(self.label_mass_sum)

    @property
    def chosen_logprob_mean(self) -> float:
        return self._mean(self.chosen_logprob_sum)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "label_counts": self.label_counts.tolist(),
            "confidence_hist": self.confidence_hist.tolist(),
            "entropy_hist": self.entropy_hist.tolist(),
            "entropy_sum": self.entropy_sum,
            "entropy_sumsq": self.entropy_sumsq,
            "label_mass_sum": self.label_mass_sum,
            "chosen_logprob_sum": self.chosen_logprob_sum,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowSummary:
        a = lambda key: np.asarray(d[key], dtype=np.int64)  # noqa: E731
        return cls(a("label_counts"), a("confidence_hist"), a("entropy_hist"), int(d["n"]),
                   float(d["entropy_sum"]), float(d["entropy_sumsq"]), float(d["label_mass_sum"]),
                   float(d["chosen_logprob_sum"]))


# ---------------------------------------------------------------------------------------------------
# Divergences between count vectors


def smoothed_distribution(counts: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(counts + alpha) / (n + K alpha): additive smoothing; alpha = 0.5 is the Jeffreys prior.

    Without it one empty bin makes KL(P || Q) infinite (Q = 0 where P > 0), which says nothing useful
    about a window that merely saw no message there. With it every bin gets a pseudo-count, KL stays
    finite, and the bias vanishes as n grows (it is the posterior mean under a Dirichlet(alpha) prior).
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum() + alpha * c.shape[-1]
    if alpha < 0 or total <= 0:
        raise ValueError(f"need alpha >= 0 and some mass, got alpha={alpha}, total={total}")
    return (c + alpha) / total


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float = 0.5) -> float:
    """KL(P || Q) in nats between the smoothed distributions of two count vectors (inf if alpha = 0 and Q is
    empty where P is not)."""
    return float(rel_entr(smoothed_distribution(p_counts, alpha), smoothed_distribution(q_counts, alpha)).sum())


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float = 0.5) -> float:
    """Jensen-Shannon divergence in bits (so in [0, 1]), symmetric and finite even without smoothing."""
    p, q = smoothed_distribution(p_counts, alpha), smoothed_distribution(q_counts, alpha)
    m = 0.5 * (p + q)
    # = jensenshannon(p, q, base=2) ** 2 (pinned by the tests); rel_entr directly is 10x cheaper.
    return float((rel_entr(p, m).sum() + rel_entr(q, m).sum()) / (2.0 * math.log(2.0)))


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray, alpha: float = 0.5) -> float:
    """Population stability index sum (a - e) ln(a / e) = KL(A||E) + KL(E||A) (Jeffreys divergence).

    Industry reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    e = smoothed_distribution(expected_counts, alpha)
    a = smoothed_distribution(actual_counts, alpha)
    return float(rel_entr(a, e).sum() + rel_entr(e, a).sum())


Statistic = Literal["js", "kl", "psi"]


def effect_size(window_counts: np.ndarray, baseline_counts: np.ndarray, statistic: Statistic = "js",
                alpha: float = 0.5) -> float:
    """The named divergence of the window from the baseline: JS (bits), KL(window||baseline), PSI."""
    if statistic == "js":
        return js_divergence(window_counts, baseline_counts, alpha)
    if statistic == "kl":
        return kl_divergence(window_counts, baseline_counts, alpha)
    if statistic == "psi":
        return psi(baseline_counts, window_counts, alpha)
    raise ValueError(f"statistic must be 'js', 'kl' or 'psi', got {statistic!r}")


# ---------------------------------------------------------------------------------------------------
# Significance: G-test of homogeneity, Holm across families


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


def g_test(window_counts: np.ndarray, baseline_counts: np.ndarray,
           min_expected: float = 5.0) -> tuple[float, int, float]:
    """G-test of homogeneity of two count vectors: (G, degrees of freedom, p-value).

    Both rows are samples, so the baseline's own sampling error is accounted for, and the p-value
    scales with the window size. The same statistic as `scipy.stats.chi2_contingency(table,
    correction=False, lambda_="log-likelihood")` (the tests pin it), computed with its scipy.special
    primitives because the stats wrapper costs ~0.7 ms a call, which every window of every task pays.
    Columns empty in both rows are dropped and sparse ones pooled; with fewer than two columns left
    (or an empty row) there is nothing to test and p = 1.
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
    """Holm step-down adjusted p-values: reject H_i when adjusted p_i < alpha; FWER <= alpha, any dependence."""
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
    """When a window counts as drifted: p < alpha (family-wise over a window's tests) and effect > min_effect.

    alpha = 5e-4 was chosen by `bench/drift_eval.py --tune` on seeds separate from the reported ones:
    the largest of 1e-3, 5e-4, 2e-4, 1e-4, 5e-5 whose stationary false-alarm rate had a 95% upper
    bound at or below 1 per 1000 windows at 200 and 500 messages per window (1e-3 measured 0.88 per
    1000, bound 1.26) while alerting on a 20-point label shift within 2 windows in >= 99% of runs.
    min_effect = 0.005 bits of JS is set by reasoning, not tuned: about an 8-point shift of a
    balanced binary prior (a 20-point shift is 0.029 bits), so the shifts the service promises to
    catch clear it while sub-point shifts in huge windows do not. min_effect is in the statistic's
    unit: for the same 8-point shift use about 0.03 with "psi" and 0.015 with "kl" (nats).
    """

    alpha: float = 5e-4
    min_effect: float = 0.005
    statistic: Statistic = "js"
    smoothing: float = 0.5  # additive pseudo-count for the effect size (Jeffreys)
    min_expected: float = 5.0  # sparse-column pooling for the G-test

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "min_effect": self.min_effect, "statistic": self.statistic,
                "smoothing": self.smoothing, "min_expected": self.min_expected}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftTest:
        return cls(**d)


@dataclass(frozen=True)
class DriftVerdict:
    statistic: str  # "js", "kl", "psi" (what `value` and `threshold` measure)
    value: float  # effect size of the window against the baseline
    threshold: float  # min_effect: the value must exceed it
    p_value: float | None  # G-test p-value (Holm-adjusted in compare_window); None when there is none
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "value": self.value, "threshold": self.threshold,
                "p_value": self.p_value, "drifted": self.drifted}


def _verdict(window_counts: np.ndarray, baseline_counts: np.ndarray, config: DriftTest,
             p_value: float) -> DriftVerdict:
    value = effect_size(window_counts, baseline_counts, config.statistic, config.smoothing)
    return DriftVerdict(config.statistic, value, config.min_effect, p_value,
                        bool(p_value < config.alpha and value > config.min_effect))


def compare(window_counts: np.ndarray, baseline_counts: np.ndarray, config: DriftTest = DriftTest()) -> DriftVerdict:
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
    """Labels, confidence and entropy histograms of a window against the baseline, Holm over the three."""
    pairs = [(window.label_counts, baseline.label_counts), (window.confidence_hist, baseline.confidence_hist),
             (window.entropy_hist, baseline.entropy_hist)]
    adjusted = holm([g_test(w, b, config.min_expected)[2] for w, b in pairs])
    return WindowVerdict({name: _verdict(w, b, config, float(p))
                          for name, (w, b), p in zip(FAMILIES, pairs, adjusted, strict=True)})


# ---------------------------------------------------------------------------------------------------
# Sequential detectors on a scalar stream


def entropy_shift_z(window: WindowSummary, baseline: WindowSummary) -> float:
    """Standardised shift of the window's mean entropy: (mean_w - mean_b) / (s_b / sqrt(n_w)).

    In standard-error units of a window mean, so detector parameters do not depend on window size and
    windows of varying size are comparable. The baseline's own mean error, s_b / sqrt(n_b), is shared
    by every window and acts as an offset the detector cannot average away; with a baseline of >= 100
    windows it is <= 0.1 sigma and barely moves the false-alarm rate. If traffic is overdispersed
    (window means vary more than s_b / sqrt(n_w)), scale by the spread of the baseline's window means.
    """
    s = baseline.entropy_std
    if not window.n or not s > 0:
        return 0.0
    return (window.entropy_mean - baseline.entropy_mean) * math.sqrt(window.n) / s


def cusum_arl(h: float, k: float, shift: float = 0.0) -> float:
    """One-sided CUSUM average run length, Siegmund's approximation, all in sigma units.

    ARL = (exp(-2 D b) + 2 D b - 1) / (2 D^2) with D = shift - k and b = h + 1.166 (b^2 when D = 0).
    With shift = 0 it is the in-control ARL0 (mean windows between false alarms); with the shift to
    detect it is the expected detection delay.
    """
    d, b = shift - k, h + 1.166
    if abs(d) < 1e-9:
        return b * b
    return (math.exp(-2 * d * b) + 2 * d * b - 1) / (2 * d * d)


def cusum_threshold(arl0: float, k: float = 0.5, two_sided: bool = True) -> float:
    """Threshold h (sigma units) giving in-control ARL arl0; two-sided halves each side's ARL.

    For normal window means the approximation is within a few percent of exact ARLs (k = 0.5, h = 4:
    336 vs tabulated 336). False alarms per 1000 windows are then about 1000 / arl0.
    """
    target = 2 * arl0 if two_sided else arl0
    return float(brentq(lambda h: cusum_arl(h, k) - target, 0.0, 100.0))


class Cusum:
    """Two-sided tabular CUSUM against a target mean (river-style API).

    S+ = max(0, S+ + x - target - k), S- = max(0, S- + target - x - k); drift when either exceeds h.
    k (the allowance, "delta") is half the shift it is tuned to catch fastest; h ("lambda") sets the
    false-alarm rate through `cusum_threshold`. With target None the mean of the first min_instances
    values becomes the target; no alarm is raised before min_instances values. After an alarm the
    sums restart at the next update, as in river.
    Defaults suit standardised input (`entropy_shift_z`): k = 0.5 sigma, h = 7.35 for ARL0 = 5000
    windows, the smallest ARL0 of 1000, 2000, 5000, 10000 whose measured false-alarm rate stayed
    under 1 per 1000 windows in `bench/drift_eval.py --tune` (ARL0 2000 measured 1.12 at 500
    messages: the baseline mean's own error, shared by all windows, makes CUSUM alarm more often than
    its nominal 1000 / ARL0).
    """

    def __init__(self, k: float = 0.5, h: float | None = None, target: float | None = 0.0,
                 min_instances: int = 0, arl0: float = 5000.0) -> None:
        self.k = float(k)
        self.h = float(h) if h is not None else cusum_threshold(arl0, self.k)
        self.target = target
        self.min_instances = int(min_instances)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.pos = 0.0
        self.neg = 0.0
        self._warm_sum = 0.0
        self._drift = False

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> None:
        if self._drift:
            self.pos = self.neg = 0.0
            self._drift = False
        self.n += 1
        if self.target is None:
            self._warm_sum += x
            if self.n >= max(self.min_instances, 1):
                self.target = self._warm_sum / self.n
            return
        self.pos = max(0.0, self.pos + x - self.target - self.k)
        self.neg = max(0.0, self.neg + self.target - x - self.k)
        if self.n >= self.min_instances and (self.pos > self.h or self.neg > self.h):
            self._drift = True

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.h, "target": self.target, "min_instances": self.min_instances,
                "n": self.n, "pos": self.pos, "neg": self.neg, "warm_sum": self._warm_sum, "drift": self._drift}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cusum:
        c = cls(d["k"], d["h"], d["target"], d["min_instances"])
        c.n, c.pos, c.neg, c._warm_sum, c._drift = d["n"], d["pos"], d["neg"], d["warm_sum"], d["drift"]
        return c


class PageHinkley:
    """Two-sided Page-Hinkley test (river-style API): CUSUM against the running mean of the stream.

    m+ accumulates (x - mean_t - delta) and alarms when it rises more than `threshold` above its
    minimum; m- mirrors it for decreases. Unlike `Cusum` it needs no target, at the price of a mean
    that absorbs part of the shift once it starts (slower on long shifts). Once the running mean has
    settled it behaves as a CUSUM with k = delta, h = threshold, so `cusum_threshold` sets the
    threshold; `min_instances` values pass before any alarm so the mean is settled. After an alarm
    the state restarts at the next update, as in river. No fading factor (river's alpha = 1).
    Defaults suit standardised input (`entropy_shift_z`): delta = 0.5 sigma, threshold = 6.44 for
    ARL0 = 2000 windows, the smallest of 1000, 2000, 5000, 10000 whose measured false-alarm rate stayed
    under 1 per 1000 windows in `bench/drift_eval.py --tune` (it measured 0.3-0.6: needing no
    baseline mean, Page-Hinkley alarms less often than a CUSUM with the same threshold).
    """

    def __init__(self, delta: float = 0.5, threshold: float | None = None, min_instances: int = 30,
                 mode: Literal["both", "up", "down"] = "both", arl0: float = 2000.0) -> None:
        if mode not in ("both", "up", "down"):
            raise ValueError(f"mode must be 'both', 'up' or 'down', got {mode!r}")
        self.delta = float(delta)
        two_sided = mode == "both"
        self.threshold = float(threshold) if threshold is not None else cusum_threshold(arl0, self.delta, two_sided)
        self.min_instances = int(min_instances)
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum_up = self.min_up = 0.0
        self.sum_down = self.max_down = 0.0
        self._drift = False

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> None:
        if self._drift:
            self.reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.sum_up += x - self.mean - self.delta
        self.min_up = min(self.min_up, self.sum_up)
        self.sum_down += x - self.mean + self.delta
        self.max_down = max(self.max_down, self.sum_down)
        if self.n < self.min_instances:
            return
        up = self.mode != "down" and self.sum_up - self.min_up > self.threshold
        down = self.mode != "up" and self.max_down - self.sum_down > self.threshold
        self._drift = bool(up or down)

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "threshold": self.threshold, "min_instances": self.min_instances,
                "mode": self.mode, "n": self.n, "mean": self.mean, "sum_up": self.sum_up, "min_up": self.min_up,
                "sum_down": self.sum_down, "max_down": self.max_down, "drift": self._drift}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PageHinkley:
        p = cls(d["delta"], d["threshold"], d["min_instances"], d["mode"])
        p.n, p.mean, p.sum_up, p.min_up = d["n"], d["mean"], d["sum_up"], d["min_up"]
        p.sum_down, p.max_down, p._drift = d["sum_down"], d["max_down"], d["drift"]
        return p


# ---------------------------------------------------------------------------------------------------
# Episodes: one alert per drift, one recovery


Event = Literal["open", "recovered"]


@dataclass(slots=True)
class EpisodeTracker:
    """Per-window verdicts -> alert events: "open" once when drift starts, "recovered" once when it ends.

    An episode opens after `confirm` consecutive drifted windows and recovers after `clear`
    consecutive clean ones; nothing is emitted in between, however long the drift lasts. confirm = 1
    keeps detection within the first drifted window; clear > 1 stops a drift hovering at the
    threshold from flapping. Fed by a sequential detector (which fires once, then restarts), choose
    `clear` above its re-alarm time or feed `window_drifted or detector.drift_detected`.
    """

    confirm: int = 1
    clear: int = 3
    active: bool = False
    streak: int = 0  # consecutive windows contradicting the current state

    def update(self, drifted: bool) -> Event | None:
        self.streak = self.streak + 1 if drifted != self.active else 0
        if not self.active and self.streak >= self.confirm:
            self.active, self.streak = True, 0
            return "open"
        if self.active and self.streak >= self.clear:
            self.active, self.streak = False, 0
            return "recovered"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"confirm": self.confirm, "clear": self.clear, "active": self.active, "streak": self.streak}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeTracker:
        return cls(int(d["confirm"]), int(d["clear"]), bool(d["active"]), int(d["streak"]))


# ---------------------------------------------------------------------------------------------------
# Canary prompts: model drift from top-k token distributions

PROB_FLOOR = 1e-6
"""Last-resort probability for a token missing from a top-k that covered (almost) all the mass."""


def _probs(topk: Mapping[str, float]) -> dict[str, float]:
    """Logprobs -> probabilities, clipped at 1 (servers return +1e-7 for a certain token)."""
    return {tok: math.exp(min(lp, 0.0)) for tok, lp in topk.items()}


def _missing_floor(p: Mapping[str, float]) -> float:
    """Probability for a token this top-k did not show: at most the smallest shown one and the unshown mass."""
    if not p:
        return PROB_FLOOR
    return max(min(min(p.values()), 1.0 - sum(p.values())), PROB_FLOOR)


def canary_kl(baseline_topk: Mapping[str, float], current_topk: Mapping[str, float],
              floor: float | None = None) -> float:
    """KL(baseline || current) in nats between two top-k token distributions (token -> logprob).

    Both are taken over the union of their shown tokens and renormalised there. A token one side did
    not show gets `floor`, by default that side's min(smallest shown probability, unshown mass) (its
    true probability is below both; at least 1e-6). The unshown mass itself is not a bucket of its
    own: it jitters between identical calls, and when a top-k covers almost all the mass its
    near-zero remainder would dominate the KL. Direction: how badly the current model explains what
    the baseline model said.
    """
    p, q = _probs(baseline_topk), _probs(current_topk)
    fp = floor if floor is not None else _missing_floor(p)
    fq = floor if floor is not None else _missing_floor(q)
    tokens = sorted(p.keys() | q.keys())
    pv = np.array([p.get(t, fp) for t in tokens])
    qv = np.array([q.get(t, fq) for t in tokens])
    return float(rel_entr(pv / pv.sum(), qv / qv.sum()).sum())


def pool_topk(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean probability per token over repeated samples of one prompt (unshown counts 0), as logprobs."""
    total: dict[str, float] = {}
    for s in samples:
        for tok, pr in _probs(s).items():
            total[tok] = total.get(tok, 0.0) + pr
    return {tok: math.log(v / len(samples)) for tok, v in total.items()}


def canary_score(reference: Mapping[str, Mapping[str, float]], current: Mapping[str, Mapping[str, float]],
                 floor: float | None = None) -> float:
    """Mean canary_kl over the reference's prompts (every prompt must be in current)."""
    return float(np.mean([canary_kl(reference[k], current[k], floor) for k in reference]))


@dataclass
class CanaryBaseline:
    """Pooled top-k per canary prompt and the null distribution of the canary score.

    Built from m >= 2 repeats of every prompt under the baseline model. null_scores[r] is the score of
    repeat r against the pool of the other m - 1 repeats: how far a sample of the *same* model lands
    (batching, kernels and quantisation make logprobs jitter between identical calls).
    """

    reference: dict[str, dict[str, float]]
    null_scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "null_scores": self.null_scores}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CanaryBaseline:
        return cls({k: dict(v) for k, v in d["reference"].items()}, [float(x) for x in d["null_scores"]])


def canary_baseline(repeats: Mapping[str, Sequence[Mapping[str, float]]], floor: float | None = None) -> CanaryBaseline:
    """From {prompt: [top-k of repeat 1, ..., repeat m]} (same m for every prompt, m >= 2)."""
    sizes = {len(v) for v in repeats.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"every prompt needs the same number (>= 2) of repeats, got {sorted(sizes)}")
    m = sizes.pop()
    null = []
    for r in range(m):
        loo = {k: pool_topk([s for i, s in enumerate(v) if i != r]) for k, v in repeats.items()}
        null.append(canary_score(loo, {k: v[r] for k, v in repeats.items()}, floor))
    return CanaryBaseline({k: pool_topk(v) for k, v in repeats.items()}, null)


def compare_canaries(baseline: CanaryBaseline, current: Mapping[str, Mapping[str, float]],
                     min_effect: float = 0.02, quantile: float = 1.0, floor: float | None = None) -> DriftVerdict:
    """Current canary score against the baseline's repeat-to-repeat spread.

    Drift when the score exceeds both the `quantile` of the null scores (1.0 = their max) and
    min_effect (0.02 nats is about a 10-point move of a canary's top token, 0.7 -> 0.6). The rank
    p-value (1 + #{null >= score}) / (m + 1) is exact for exchangeable samples but no smaller than
    1 / (m + 1); with a deterministic server the null is all zeros and min_effect decides alone.
    The live score uses the pool of all m repeats, a little closer to any sample than the m - 1 pools
    behind the null, so the comparison errs toward silence.
    """
    score = canary_score(baseline.reference, current, floor)
    null = np.asarray(baseline.null_scores, dtype=np.float64)
    threshold = max(float(np.quantile(null, quantile)), min_effect)
    p_value = (1 + int(np.sum(null >= score))) / (null.shape[0] + 1)
    return DriftVerdict("canary_kl", score, threshold, p_value, bool(score > threshold))
