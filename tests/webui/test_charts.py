"""tuninglab.charts: standalone SVG line charts (parsed back with ElementTree)."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

from tuninglab.charts import format_tick, line_chart_svg, nice_ticks, stacked_svg

NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(document: str) -> ET.Element:
    return ET.fromstring(document)  # noqa: S314 - documents this test just built


def polylines(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    lines = {}
    for line in root.iter("{http://www.w3.org/2000/svg}polyline"):
        points = [tuple(float(c) for c in pair.split(",")) for pair in line.get("points").split()]
        assert int(line.get("data-points")) == len(points)
        lines[line.get("data-series")] = points
    return lines


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_it_draws_one_polyline_per_series_with_every_point():
    series = {"train": [(s, 3.0 / s) for s in range(1, 21)], "eval": [(5, 0.9), (10, 0.5), (15, 0.4), (20, 0.35)]}
    root = parse(line_chart_svg(series, title="Loss", x_label="step", y_label="loss"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == ("640", "280")
    lines = polylines(root)
    assert {name: len(points) for name, points in lines.items()} == {"train": 20, "eval": 4}
    # Every point lies inside the document, x grows with the step, and a lower loss is drawn higher up.
    for points in lines.values():
        assert all(0 <= x <= 640 and 0 <= y <= 280 for x, y in points)
    train = lines["train"]
    assert [x for x, _ in train] == sorted(x for x, _ in train)
    assert train[0][1] < train[-1][1]  # y grows downwards in SVG: the first (highest) loss is drawn on top
    labels = texts(root)
    assert {"Loss", "step", "loss", "train", "eval"} <= set(labels)


def test_it_skips_non_finite_and_non_numeric_points():
    series = {
        "train": [(1, 1.0), (2, math.nan), (3, math.inf), (4, None), (5, 0.5), (math.nan, 0.4), (6, "x"), (7, True)],
        "lr": [(1, 1e-4), (2, -math.inf)],
    }
    lines = polylines(parse(line_chart_svg(series, title="t", x_label="x", y_label="y")))
    assert {name: len(points) for name, points in lines.items()} == {"train": 2, "lr": 1}


def test_it_says_no_data_yet_when_nothing_is_drawable():
    for series in ({}, {"train": []}, {"train": [(1, math.nan)], "eval": []}):
        root = parse(line_chart_svg(series, title="Loss", x_label="step", y_label="loss"))
        assert polylines(root) == {}
        assert "no data yet" in texts(root)


def test_it_escapes_titles_labels_and_series_names():
    hostile = '<script>alert("x")</script>&'
    document = line_chart_svg({hostile: [(1, 1.0), (2, 2.0)]}, title=hostile, x_label=hostile, y_label="y")
    assert "<script>" not in document
    root = parse(document)  # still well-formed XML
    assert not list(root.iter("script")) and not list(root.iter("{http://www.w3.org/2000/svg}script"))
    assert texts(root).count(hostile) == 3  # title, x label, legend: the text survives, as text
    assert list(polylines(root)) == [hostile]


def test_a_flat_or_single_point_series_still_gets_an_axis_range():
    root = parse(line_chart_svg({"lr": [(3, 2e-4)]}, title="lr", x_label="step", y_label="lr"))
    ((x, y),) = polylines(root)["lr"]
    assert math.isfinite(x) and math.isfinite(y)
    assert len(list(root.iter("{http://www.w3.org/2000/svg}circle"))) == 1  # a lone point is marked


def test_nice_ticks_cover_the_range_in_round_steps():
    ticks = nice_ticks(0.37, 2.91)
    assert ticks[0] <= 0.37 and ticks[-1] >= 2.91
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 and steps.pop() in {0.5, 1.0}
    assert nice_ticks(0.1, 0.3) == [0.1, 0.15, 0.2, 0.25, 0.3]
    assert format_tick(0.0002) == "0.0002" and format_tick(2e-5) == "2e-05"
    assert format_tick(1.5) == "1.5" and format_tick(0) == "0"


def test_stacked_charts_form_one_document_with_both_charts():
    loss = line_chart_svg({"train": [(1, 2.0), (2, 1.0)]}, title="Loss", x_label="step", y_label="loss")
    lr = line_chart_svg({"lr": [(1, 1e-4), (2, 5e-5)]}, title="LR", x_label="step", y_label="lr", height=200)
    root = parse(stacked_svg([loss, lr], width=640, heights=[280, 200]))
    assert root.get("height") == "480"
    inner = root.findall("svg:svg", NS)
    assert [(s.get("y"), s.get("height")) for s in inner] == [("0", "280"), ("280", "200")]
    assert {name: len(points) for name, points in polylines(root).items()} == {"train": 2, "lr": 2}
