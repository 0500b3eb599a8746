"""The benchmarks' shared statistics and result file (the numbers themselves are never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.common import machine, percentile, summary, table, write_result


def test_it_interpolates_percentiles_like_numpy():
    values = [10.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)
    assert percentile(values, 100) == 10.0


def test_it_summarises_the_median_and_its_relative_spread():
    stats = summary([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (stats["n"], stats["min"], stats["median"], stats["max"]) == (5, 1.0, 3.0, 10.0)
    assert stats["relative_spread"] == pytest.approx((7.6 - 1.4) / 3.0)
    with pytest.raises(ValueError):
        summary([])


def test_it_writes_the_result_with_the_machine_and_the_load_after(tmp_path):
    info = machine()
    path = write_result("demo", {"rows": [1, 2]}, machine_info=info, out=tmp_path / "demo.json")
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo" and data["rows"] == [1, 2]
    assert data["machine"]["cores"] >= 1 and "load_average_after" in data["machine"]
    assert data["machine"]["packages"]["torch"].startswith("2.13.0")


def test_it_formats_a_table_with_dashes_for_missing_values():
    text = table([{"a": 1.234, "b": None}], [("a", "A", ".2f"), ("b", "Bee", "d")])
    assert text.splitlines() == ["   A  Bee", "1.23    -"]
