"""attnbench.core.machine_check and attnbench.engine.reference_kernel: the reference kernel,
pairing samples with it, and merging passes."""

from __future__ import annotations

import math

import pytest

from attnbench.core import machine_check
from attnbench.engine import reference_kernel


def test_reference_readings_are_real_and_positive() -> None:
    assert reference_kernel.reference_seconds(reps=3) > 0
    read = reference_kernel.pair_reader()
    assert all(read() > 0 for _ in range(3))


def test_each_sample_is_paired_with_the_geometric_mean_of_its_neighbouring_readings() -> None:
    assert machine_check.paired([1.0, 4.0, 9.0]) == [2.0, 6.0]
    assert machine_check.paired([1.0]) == []


def test_relative_samples_divide_each_sample_by_its_pair_across_passes() -> None:
    time_s = {"samples": [2.0, 8.0, 3.0]}
    check = machine_check.record(1.0, 1.0, [1.0, 4.0, 4.0])  # pass 1: two samples
    later = machine_check.record(1.0, 1.0, [1.0, 9.0])  # pass 2: one sample
    merged = machine_check.merge([check, later])
    assert merged is not None and merged["pair_readings_s"] == [[1.0, 4.0, 4.0], [1.0, 9.0]]
    assert merged["readings_s"] == [1.0, 1.0, 1.0, 1.0]
    assert machine_check.relative_samples(time_s["samples"], merged) == pytest.approx([1.0, 2.0, 1.0])
    assert math.isclose(machine_check.drift(merged) or 0, 0)


def test_relative_samples_refuse_what_does_not_line_up() -> None:
    with_pairs = machine_check.record(1.0, 1.0, [1.0, 1.0])
    without = machine_check.record(1.0, 1.0)
    assert machine_check.relative_samples([1.0, 2.0], with_pairs) is None  # 2 samples, 1 pair
    assert machine_check.relative_samples([1.0], without) is None
    assert machine_check.relative_samples([1.0], None) is None
    bad = {**with_pairs, "pair_readings_s": [[1.0, 0.0]]}
    assert machine_check.relative_samples([1.0], bad) is None
    # A pass without pair readings (an older worker) drops them for the merged record.
    merged = machine_check.merge([with_pairs, without])
    assert merged is not None and "pair_readings_s" not in merged
