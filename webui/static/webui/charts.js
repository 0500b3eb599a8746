/* Line charts drawn in the browser, in the layout of tuninglab/charts.py (keep the two in step).
 *
 * The job page gets its first charts as SVG from the server; while the job runs, this redraws
 * them from the points live.json adds. Elements are built with the DOM API and texts set with
 * textContent, so no data is ever parsed as markup.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"];
  var MARGIN = { left: 64, right: 16, top: 32, bottom: 44 };
  var TICKS = 5;

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function finitePoints(points) {
    return (points || []).filter(function (p) {
      return p && typeof p[0] === "number" && typeof p[1] === "number" && isFinite(p[0]) && isFinite(p[1]);
    });
  }

  function niceTicks(low, high, count) {
    count = count || TICKS;
    if (high < low) { var t = low; low = high; high = t; }
    if (high === low) { return [low]; }
    var raw = (high - low) / Math.max(1, count - 1);
    var magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * magnitude; }).find(function (s) { return s >= raw; });
    var digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
    var round = function (v) { return Number(v.toFixed(Math.min(digits, 20))); };
    var ticks = [];
    var value = Math.floor(low / step) * step;
    while (value <= high + step * 1e-9) { ticks.push(round(value)); value += step; }
    if (ticks.length && ticks[ticks.length - 1] < high) { ticks.push(round(value)); }
    return ticks;
  }

  function formatTick(v) {
    if (v === 0) { return "0"; }
    if (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3) { return Number(v.toPrecision(3)).toExponential(); }
    return String(Number(v.toPrecision(4)));
  }

  function domain(values) {
    var low = Math.min.apply(null, values), high = Math.max.apply(null, values);
    if (low === high) { var pad = Math.abs(low) * 0.1 || 1; return [low - pad, high + pad]; }
    return [low, high];
  }

  /* series: [[name, [[x, y], ...]], ...] (ordered); returns an <svg> element. */
  function lineChart(series, opts) {
    var width = opts.width || 640, height = opts.height || 280;
    var svg = el("svg", { xmlns: SVG_NS, width: width, height: height, viewBox: "0 0 " + width + " " + height,
      "font-family": "sans-serif", "font-size": 11, role: "img", "aria-label": opts.title });
    svg.appendChild(el("title", {}, opts.title));
    svg.appendChild(el("rect", { x: 0, y: 0, width: width, height: height, fill: "#ffffff" }));
    svg.appendChild(el("text", { x: width / 2, y: 18, "text-anchor": "middle", "font-size": 13, "font-weight": "bold" }, opts.title));
    var left = MARGIN.left, right = width - MARGIN.right, top = MARGIN.top, bottom = height - MARGIN.bottom;
    var clean = series.map(function (s) { return [s[0], finitePoints(s[1])]; });
    var all = [];
    clean.forEach(function (s) { all = all.concat(s[1]); });
    if (!all.length) {
      svg.appendChild(el("rect", { x: left, y: top, width: right - left, height: bottom - top, fill: "none", stroke: "#cccccc" }));
      svg.appendChild(el("text", { x: (left + right) / 2, y: (top + bottom) / 2, "text-anchor": "middle", fill: "#666666", "class": "no-data" }, "no data yet"));
      return svg;
    }
    var xd = domain(all.map(function (p) { return p[0]; }));
    var yd = domain(all.map(function (p) { return p[1]; }));
    var xt = niceTicks(xd[0], xd[1]), yt = niceTicks(yd[0], yd[1]);
    var xmin = xt[0], xmax = xt[xt.length - 1], ymin = yt[0], ymax = yt[yt.length - 1];
    var sx = function (x) { return left + (x - xmin) / (xmax - xmin) * (right - left); };
    var sy = function (y) { return bottom - (y - ymin) / (ymax - ymin) * (bottom - top); };

    var grid = el("g", { "class": "grid", stroke: "#eeeeee" });
    yt.forEach(function (t) { grid.appendChild(el("line", { x1: left, x2: right, y1: sy(t).toFixed(1), y2: sy(t).toFixed(1) })); });
    svg.appendChild(grid);
    var axes = el("g", { "class": "axes", stroke: "#333333" });
    axes.appendChild(el("line", { x1: left, x2: right, y1: bottom, y2: bottom }));
    axes.appendChild(el("line", { x1: left, x2: left, y1: top, y2: bottom }));
    svg.appendChild(axes);
    var xg = el("g", { "class": "x-ticks", "text-anchor": "middle" });
    xt.forEach(function (t) {
      xg.appendChild(el("line", { x1: sx(t).toFixed(1), x2: sx(t).toFixed(1), y1: bottom, y2: bottom + 4, stroke: "#333333" }));
      xg.appendChild(el("text", { x: sx(t).toFixed(1), y: bottom + 16 }, formatTick(t)));
    });
    svg.appendChild(xg);
    var yg = el("g", { "class": "y-ticks", "text-anchor": "end" });
    yt.forEach(function (t) {
      yg.appendChild(el("line", { x1: left - 4, x2: left, y1: sy(t).toFixed(1), y2: sy(t).toFixed(1), stroke: "#333333" }));
      yg.appendChild(el("text", { x: left - 6, y: (sy(t) + 4).toFixed(1) }, formatTick(t)));
    });
    svg.appendChild(yg);
    svg.appendChild(el("text", { x: (left + right) / 2, y: height - 8, "text-anchor": "middle", "class": "x-label" }, opts.xLabel));
    var my = ((top + bottom) / 2).toFixed(1);
    svg.appendChild(el("text", { x: 14, y: my, "text-anchor": "middle", "class": "y-label", transform: "rotate(-90 14 " + my + ")" }, opts.yLabel));

    var legendY = top + 4;
    clean.forEach(function (s, index) {
      var color = PALETTE[index % PALETTE.length], points = s[1];
      if (points.length) {
        var coords = points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ");
        svg.appendChild(el("polyline", { fill: "none", stroke: color, "stroke-width": 1.5, "data-series": s[0], "data-points": points.length, points: coords }));
        if (points.length === 1) {
          svg.appendChild(el("circle", { cx: sx(points[0][0]).toFixed(1), cy: sy(points[0][1]).toFixed(1), r: 2.5, fill: color }));
        }
      }
      var legend = el("g", { "class": "legend" });
      legend.appendChild(el("line", { x1: right - 110, x2: right - 94, y1: legendY, y2: legendY, stroke: color, "stroke-width": 2 }));
      legend.appendChild(el("text", { x: right - 90, y: legendY + 4 }, s[0]));
      svg.appendChild(legend);
      legendY += 14;
    });
    return svg;
  }

  window.TuningLabCharts = { lineChart: lineChart, niceTicks: niceTicks, formatTick: formatTick };
})();
