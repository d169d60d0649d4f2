"""attnbench.report.analysis: log-log slopes with their uncertainty, speedups and crossover lengths."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from attnbench.report.analysis import Crossover, SpeedupPoint, crossover, fit_loglog


def sp(n: int, s: float | None, outcome: str = "measured", band: float = 0.01) -> SpeedupPoint:
    if s is None:
        return SpeedupPoint(n, None, None, None, outcome)
    return SpeedupPoint(n, s, s * (1 - band), s * (1 + band), outcome)


def test_exact_power_law_has_its_exponent_and_no_spread() -> None:
    ns = [256, 512, 1024, 2048]
    fit = fit_loglog(ns, [3e-9 * n**2 for n in ns])
    assert fit is not None
    assert fit.slope == pytest.approx(2.0)
    assert fit.stderr == pytest.approx(0.0, abs=1e-9)
    assert fit.predict(4096) == pytest.approx(3e-9 * 4096**2)
    assert (fit.min_len, fit.max_len, fit.points) == (256, 2048, 4)


def test_slope_uncertainty_matches_scipy() -> None:
    ns = [128, 256, 512, 1024, 2048, 4096]
    ys = [1.0, 2.3, 3.9, 8.8, 15.1, 33.0]
    fit = fit_loglog(ns, ys)
    ref = stats.linregress([math.log(n) for n in ns], [math.log(y) for y in ys])
    assert fit is not None and fit.stderr is not None and fit.ci95 is not None
    assert fit.slope == pytest.approx(ref.slope)
    assert fit.stderr == pytest.approx(ref.stderr)
    assert fit.ci95 == pytest.approx(stats.t.ppf(0.975, len(ns) - 2) * ref.stderr, rel=1e-6)
    assert "±" in fit.text()


def test_two_points_give_a_slope_without_an_uncertainty() -> None:
    fit = fit_loglog([1000, 2000], [1.0, 4.0])
    assert fit is not None and fit.slope == pytest.approx(2.0)
    assert fit.stderr is None and fit.ci95 is None
    assert fit.text() == "2.00 (2 points)"


@pytest.mark.parametrize(
    ("ns", "ys"),
    [([512], [1.0]), ([512, 512], [1.0, 2.0]), ([512, 1024], [1.0, 0.0]), ([], [])],
)
def test_no_fit_without_two_lengths_or_with_a_non_positive_value(ns: list[int], ys: list[float]) -> None:
    assert fit_loglog(ns, ys) is None


@given(
    slope=st.floats(-3, 3),
    scale=st.floats(1e-6, 1e3),
    lengths=st.lists(st.integers(16, 1 << 16), min_size=2, max_size=8, unique=True),
)
def test_any_power_law_is_recovered(slope: float, scale: float, lengths: list[int]) -> None:
    fit = fit_loglog(lengths, [scale * n**slope for n in lengths])
    assert fit is not None
    assert fit.slope == pytest.approx(slope, abs=1e-7)


def test_crossover_always_never_and_none() -> None:
    assert crossover([]) == Crossover("none")
    assert crossover([sp(512, 1.5), sp(1024, 2.0)]).kind == "always"
    assert crossover([sp(512, 1.5), sp(1024, 2.0)]).length == 512
    never = crossover([sp(512, 2.0), sp(1024, 0.8)])
    assert (never.kind, never.below) == ("never", 1024)
    assert never.text() == "never (to 1,024)"


def test_crossover_is_the_start_of_the_final_winning_stretch() -> None:
    # wins at 512, loses at 1024, wins from 2048 on: the crossover is 2048, not 512
    c = crossover([sp(512, 1.2), sp(1024, 0.9), sp(2048, 1.5), sp(4096, 2.0)])
    assert (c.kind, c.length, c.below) == ("at", 2048, 1024)
    # log-log interpolation between (1024, 0.9) and (2048, 1.5)
    frac = -math.log(0.9) / (math.log(1.5) - math.log(0.9))
    assert c.interpolated == pytest.approx(1024 * 2**frac)
    assert c.certain


def test_crossover_interpolation_is_exact_for_a_power_law_speedup() -> None:
    pts = [sp(n, n / 2000) for n in (512, 1024, 2048, 4096)]
    c = crossover(pts)
    assert c.length == 2048 and c.interpolated == pytest.approx(2000)
    assert c.text() == "2,048 (≈2,000)"


def test_crossover_is_uncertain_when_the_band_straddles_one() -> None:
    c = crossover([sp(1024, 0.98, band=0.05), sp(2048, 1.3)])
    assert c.kind == "at" and not c.certain
    assert c.text().endswith("?")


def test_failures_count_as_wins_and_losses_without_a_ratio() -> None:
    # the baseline ran out of memory at the longest length: the variant wins there
    c = crossover([sp(1024, 0.5), sp(2048, 1.2), sp(4096, None, "baseline failed")])
    assert (c.kind, c.length) == ("at", 2048)
    # the variant failed at the longest length: it never beats the baseline for good
    c = crossover([sp(1024, 1.5), sp(2048, None, "variant failed")])
    assert c.kind == "never"
    # no interpolation next to a failure: there is no ratio to interpolate
    c = crossover([sp(1024, 0.5), sp(2048, None, "baseline failed")])
    assert (c.kind, c.length, c.interpolated) == ("at", 2048, None)
