"""The image threshold and what it promises on new good parts."""

import numpy as np
import pytest

from train_host.calibrate import expected_false_alarm_rate, false_alarm_threshold


def reached_by_new_goods(held_out_goods: int, rate: float, seed: int = 0) -> float:
    """Thresholds set on many draws of held-out good scores: the mean share of new good parts reaching them."""
    rng = np.random.default_rng(seed)
    draws, new_parts = 4000, 2000
    shares = [
        (rng.gamma(2.0, size=new_parts) >= false_alarm_threshold(rng.gamma(2.0, size=held_out_goods), rate)).mean()
        for _ in range(draws)
    ]
    return float(np.mean(shares))


def test_on_a_score_the_expected_false_alarm_rate_is_exact():
    # 51 goods at 2 %: the threshold is the second highest score, which a new good part reaches 2 times in 52.
    assert expected_false_alarm_rate(51, 0.02) == pytest.approx(2 / 52)
    assert reached_by_new_goods(51, 0.02) == pytest.approx(2 / 52, rel=0.05)


def test_between_two_scores_it_lies_between_their_rates():
    # 32 goods at 2 %: between the second highest score (2 in 33) and the highest (1 in 33).
    expected, measured = expected_false_alarm_rate(32, 0.02), reached_by_new_goods(32, 0.02)
    assert 1 / 33 < measured < 2 / 33 and 1 / 33 < expected < 2 / 33
    assert expected_false_alarm_rate(113, 0.02) == pytest.approx(reached_by_new_goods(113, 0.02), rel=0.05)


def test_few_held_out_goods_promise_less_than_a_line_sees():
    assert expected_false_alarm_rate(113, 0.02) == pytest.approx(0.0284, abs=1e-4)
    assert expected_false_alarm_rate(100_000, 0.02) == pytest.approx(0.02, abs=1e-4)
