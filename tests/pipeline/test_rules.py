"""The value rules behind every settings check: closed and open range ends, NaN and infinities refused."""

from __future__ import annotations

import pytest

from qmap.errors import ConfigError
from qmap.rules import OneOf, Range


@pytest.mark.parametrize("rule, inside, outside, says", [
    (Range(0, 1), [0, 0.5, 1], [-1e-9, 1.0000001], "0..1"),
    (Range(0, 1, lo_open=True, hi_open=True), [1e-12, 0.999], [0, 1], r"in \(0, 1\)"),
    (Range(0, 1, hi_open=True), [0, 0.5], [1, -0.1], r"in \[0, 1\)"),
    (Range(0, None, lo_open=True), [1e-30, 1e30], [0, -5], "> 0"),
    (Range(None, 8), [-100, 8], [8.5], "<= 8"),
    (Range(2, 8), [2, 8], [1, 9], "2..8"),
])
def test_range_keeps_its_ends(rule, inside, outside, says):
    for v in inside:
        rule.check(v, "x")
    for v in outside:
        with pytest.raises(ConfigError, match=f"^x: {v!r} is out of range; allowed: {says}$"):
            rule.check(v, "x")


@pytest.mark.parametrize("rule", [Range(), Range(0, None), Range(None, 1), Range(0, 1, lo_open=True)])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_never_in_range(rule, value):
    """NaN fails every comparison, so a bound check alone would let it through."""
    with pytest.raises(ConfigError, match="out of range"):
        rule.check(value, "x")


def test_none_means_unset_and_choices_name_themselves():
    Range(0, 1).check(None, "x")
    OneOf(("a", "b")).check(None, "x")
    with pytest.raises(ConfigError, match="^x: 'c' is not allowed; choose one of a, b$"):
        OneOf(("a", "b")).check("c", "x")
