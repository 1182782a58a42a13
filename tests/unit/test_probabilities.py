"""streams.classify.probabilities: token folding, label matching, label scores, normalised entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from streams.classify.probabilities import (
    LabelMatcher,
    LabelScores,
    fold_token,
    label_scores,
    normalised_entropy,
)

LABELS = ("fresh", "rotten")


@pytest.fixture()
def matcher() -> LabelMatcher:
    return LabelMatcher(LABELS)


# --- fold_token -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("\u2581fresh", "fresh"),  # SentencePiece leading-space marker
        ("\u0120fresh", "fresh"),  # GPT-2 byte-level BPE leading-space marker
        (" fresh", "fresh"),
        ("  fresh  ", "fresh"),
        ("Fresh", "fresh"),
        ("FRESH", "fresh"),
        ("\u2581Fresh", "fresh"),
        ("\u0120ROTTEN", "rotten"),
        ("\u010a", ""),  # GPT-2 newline marker folds to a newline, then strips away
        ("\n", ""),
        ("", ""),
        ("Stra\u00dfe", "strasse"),  # casefold, not lower
    ],
)
def test_fold_token(token: str, expected: str) -> None:
    assert fold_token(token) == expected


# --- LabelMatcher.index ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["fresh", " fresh", " Fresh", "FRESH", "fr", "f", "F", "\u2581fresh", "\u0120fre", "\u2581Fr"],
)
def test_index_maps_fresh_variants_and_prefixes(matcher: LabelMatcher, token: str) -> None:
    assert matcher.index(token) == 0


@pytest.mark.parametrize("token", ["ro", "Rot", "rotten", " ROTTEN", "\u2581rot", "r"])
def test_index_maps_rotten_variants_and_prefixes(matcher: LabelMatcher, token: str) -> None:
    assert matcher.index(token) == 1


@pytest.mark.parametrize(
    "token",
    ["the", "<", "", " ", "\n", "\u2581", "\u0120", "freshness", "rottenly", "xfresh", "fresh!", "positive"],
)
def test_index_non_label_tokens_are_minus_one(matcher: LabelMatcher, token: str) -> None:
    assert matcher.index(token) == -1


def test_index_token_starting_two_labels_is_ambiguous() -> None:
    m = LabelMatcher(["spam", "support"])
    assert m.index("s") == -1
    assert m.index("S") == -1
    assert m.index("\u2581s") == -1
    # One more character disambiguates.
    assert m.index("sp") == 0
    assert m.index("su") == 1
    assert m.index(" Spam") == 0


def test_index_is_stable_when_memoised(matcher: LabelMatcher) -> None:
    # Second lookups come from the cache and must agree with the first.
    first = [matcher.index(t) for t in ("fresh", "ro", "the", "s")]
    second = [matcher.index(t) for t in ("fresh", "ro", "the", "s")]
    assert first == second == [0, 1, -1, -1]


def test_matcher_folds_labels_too() -> None:
    m = LabelMatcher(["Fresh", " Rotten"])
    assert m.labels == ("Fresh", " Rotten")
    assert m.index("fresh") == 0
    assert m.index("rot") == 1


# --- label_scores ---------------------------------------------------------------------------------


def test_label_scores_sums_variants_and_renormalises(matcher: LabelMatcher) -> None:
    top = [
        ("fresh", math.log(0.5)),
        (" fresh", math.log(0.1)),
        ("ro", math.log(0.2)),
        ("the", math.log(0.1)),
    ]
    s = label_scores(top, matcher)
    assert isinstance(s, LabelScores)
    # fresh: 0.5 + 0.1 = 0.6, rotten: 0.2; label total 0.8 -> [0.75, 0.25]
    np.testing.assert_allclose(s.probabilities, [0.75, 0.25], rtol=0, atol=1e-9)
    assert s.label_mass == pytest.approx(0.8 / 0.9, abs=1e-9)
    assert s.topk_mass == pytest.approx(0.9, abs=1e-9)


def test_label_scores_empty_top_list(matcher: LabelMatcher) -> None:
    s = label_scores([], matcher)
    np.testing.assert_array_equal(s.probabilities, [0.0, 0.0])
    assert s.probabilities.shape == (2,)
    assert s.label_mass == 0.0
    assert s.topk_mass == 0.0


def test_label_scores_only_non_label_tokens(matcher: LabelMatcher) -> None:
    top = [("the", math.log(0.6)), ("<", math.log(0.3)), ("s", math.log(0.05))]
    s = label_scores(top, matcher)
    np.testing.assert_array_equal(s.probabilities, [0.0, 0.0])
    assert s.label_mass == 0.0
    assert s.topk_mass == pytest.approx(0.95, abs=1e-12)


def test_label_scores_positive_logprob_is_clipped_to_probability_one(matcher: LabelMatcher) -> None:
    s = label_scores([("fresh", 1e-7)], matcher)
    np.testing.assert_array_equal(s.probabilities, [1.0, 0.0])
    assert s.topk_mass == 1.0  # exp(min(1e-7, 0)) == 1 exactly, never > 1
    assert s.label_mass == 1.0


def test_label_scores_positive_logprob_mixed(matcher: LabelMatcher) -> None:
    s = label_scores([("fresh", 3.0), ("rotten", math.log(0.25))], matcher)
    # fresh clipped to 1.0, rotten 0.25 -> [0.8, 0.2]
    np.testing.assert_allclose(s.probabilities, [0.8, 0.2], atol=1e-12)
    assert s.topk_mass == pytest.approx(1.25)
    assert s.label_mass == pytest.approx(1.0)


def test_label_scores_nan_logprob_contributes_nothing(matcher: LabelMatcher) -> None:
    top = [("fresh", float("nan")), ("rotten", math.log(0.4)), ("the", math.log(0.1))]
    s = label_scores(top, matcher)
    assert np.all(np.isfinite(s.probabilities))
    assert math.isfinite(s.label_mass) and math.isfinite(s.topk_mass)
    np.testing.assert_allclose(s.probabilities, [0.0, 1.0], atol=1e-12)
    assert s.topk_mass == pytest.approx(0.5)
    assert s.label_mass == pytest.approx(0.8)


def test_label_scores_all_nan_is_zero(matcher: LabelMatcher) -> None:
    s = label_scores([("fresh", float("nan")), ("rotten", float("nan"))], matcher)
    np.testing.assert_array_equal(s.probabilities, [0.0, 0.0])
    assert s.label_mass == 0.0
    assert s.topk_mass == 0.0


def test_label_scores_minus_inf_logprob_is_zero_mass(matcher: LabelMatcher) -> None:
    s = label_scores([("fresh", -math.inf), ("rotten", math.log(0.5))], matcher)
    np.testing.assert_allclose(s.probabilities, [0.0, 1.0])
    assert s.topk_mass == pytest.approx(0.5)


def test_label_scores_missing_label_gets_zero(matcher: LabelMatcher) -> None:
    top = [("Fresh", math.log(0.7)), ("\u2581fr", math.log(0.1)), ("the", math.log(0.2))]
    s = label_scores(top, matcher)
    np.testing.assert_allclose(s.probabilities, [1.0, 0.0], atol=1e-12)
    assert s.probabilities[1] == 0.0
    assert s.label_mass == pytest.approx(0.8)
    assert s.topk_mass == pytest.approx(1.0)


def test_label_scores_ambiguous_tokens_count_toward_no_label() -> None:
    m = LabelMatcher(["spam", "support"])
    top = [("s", math.log(0.5)), ("spam", math.log(0.3)), ("support", math.log(0.1))]
    s = label_scores(top, m)
    np.testing.assert_allclose(s.probabilities, [0.75, 0.25], atol=1e-12)
    assert s.label_mass == pytest.approx(0.4 / 0.9)
    assert s.topk_mass == pytest.approx(0.9)


def test_label_scores_three_labels() -> None:
    m = LabelMatcher(["positive", "negative", "neutral"])
    top = [
        ("\u2581positive", math.log(0.4)),
        ("Neg", math.log(0.2)),  # "neg" starts only "negative"
        ("neu", math.log(0.1)),
        ("ne", math.log(0.15)),  # starts negative and neutral -> ambiguous
        ("pos", math.log(0.1)),
        ("I", math.log(0.05)),
    ]
    s = label_scores(top, m)
    # positive 0.5, negative 0.2, neutral 0.1 -> total 0.8
    np.testing.assert_allclose(s.probabilities, [0.625, 0.25, 0.125], atol=1e-9)
    assert s.probabilities.sum() == pytest.approx(1.0)
    assert s.topk_mass == pytest.approx(1.0)
    assert s.label_mass == pytest.approx(0.8)


def test_label_scores_does_not_mutate_input(matcher: LabelMatcher) -> None:
    top = [("fresh", math.log(0.5)), ("rotten", math.log(0.5))]
    copy = list(top)
    label_scores(top, matcher)
    assert top == copy


# --- normalised_entropy ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
def test_normalised_entropy_one_hot_is_zero(p: list[float]) -> None:
    assert normalised_entropy(np.array(p)) == 0.0


@pytest.mark.parametrize("k", [2, 5])
def test_normalised_entropy_uniform_is_one(k: int) -> None:
    assert normalised_entropy(np.full(k, 1.0 / k)) == pytest.approx(1.0, abs=1e-12)


def test_normalised_entropy_single_label_is_zero() -> None:
    assert normalised_entropy(np.array([1.0])) == 0.0


def test_normalised_entropy_hand_value() -> None:
    # H([0.75, 0.25]) = -(0.75 ln 0.75 + 0.25 ln 0.25); divided by ln 2
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert normalised_entropy(np.array([0.75, 0.25])) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.8112781244591328, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalised_entropy_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 7
    p = rng.random(k)
    p /= p.sum()
    expected = scipy.stats.entropy(p) / math.log(k)
    assert normalised_entropy(p) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < normalised_entropy(p) < 1.0


def _numpy_label_scores(top: list[tuple[str, float]], matcher: LabelMatcher) -> LabelScores:
    """The earlier numpy formulation, kept as the reference the hot-path version must agree with."""
    sums = np.zeros(len(matcher.labels))
    if not top:
        return LabelScores(sums, 0.0, 0.0)
    logprobs = np.fromiter((lp for _, lp in top), dtype=float, count=len(top))
    probs = np.exp(np.minimum(np.nan_to_num(logprobs, nan=-np.inf), 0.0))
    idx = np.fromiter((matcher.index(tok) for tok, _ in top), dtype=np.intp, count=len(top))
    np.add.at(sums, idx[idx >= 0], probs[idx >= 0])
    topk_mass, label_total = float(probs.sum()), float(sums.sum())
    if label_total <= 0.0:
        return LabelScores(sums, 0.0, topk_mass)
    return LabelScores(sums / label_total, label_total / topk_mass if topk_mass > 0 else 0.0, topk_mass)


@pytest.mark.parametrize("n_labels", [2, 3, 9, 12])
def test_label_scores_and_entropy_agree_with_the_numpy_formulation(n_labels: int) -> None:
    """The pure-Python hot path (bench/stats_path.py) changes speed, not numbers: 3000 random replies each,
    1 to 20 tokens, with NaN, +/-inf and positive logprobs. Agreement is to 1e-12, not bit for bit: numpy's
    SIMD exp/log and pairwise sums round differently from libm and fsum, and differently on each CPU."""
    rng = np.random.default_rng(n_labels)
    labels = tuple(f"label{chr(97 + i)}x" for i in range(n_labels))
    matcher = LabelMatcher(labels)
    vocab = [*labels, *(" " + lbl for lbl in labels), "label", "the", "\n", "<", "▁" + labels[0]]
    specials = [float("nan"), -math.inf, math.inf, 1e-7, 0.0]
    for _ in range(3000):
        n = int(rng.integers(1, 21))
        top = [(vocab[int(rng.integers(len(vocab)))],
                specials[int(rng.integers(len(specials)))] if rng.random() < 0.05 else float(-rng.exponential(2.0)))
               for _ in range(n)]
        got, want = label_scores(top, matcher), _numpy_label_scores(top, matcher)
        assert got.label_mass == pytest.approx(want.label_mass, rel=1e-12, abs=1e-15), top
        assert got.topk_mass == pytest.approx(want.topk_mass, rel=1e-12, abs=1e-15), top
        np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-12, atol=1e-15, err_msg=str(top))
        assert (got.probabilities == 0).tolist() == (want.probabilities == 0).tolist(), top  # same labels unseen
        p = rng.dirichlet(np.full(n_labels, 0.5))
        p[rng.random(n_labels) < 0.2] = 0.0
        nz = p[p > 0]
        assert normalised_entropy(p) == pytest.approx(float(-(nz * np.log(nz)).sum() / math.log(n_labels)),
                                                      rel=1e-12, abs=1e-15)
