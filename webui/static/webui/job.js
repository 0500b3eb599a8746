/* Job page, live: polls live.json every 1.5 s while the job is not finished, then stops.
 *
 * Each answer carries the curve points and events after the last seq this page has; points are
 * merged by step (a resumed attempt's repeated step replaces the earlier value) and the charts
 * are redrawn in place. Every text goes in through textContent: nothing is parsed as markup.
 */
(function () {
  "use strict";

  var POLL_MS = 1500, MAX_BACKOFF_MS = 15000;
  var dataNode = document.getElementById("job-live-data");
  if (!dataNode || !window.TuningLabCharts) { return; }
  var live = JSON.parse(dataNode.textContent);
  var curves = { train: new Map(), eval: new Map(), lr: new Map() };
  // Seqs are nanosecond clock readings (~1.8e18): beyond what a JS number holds exactly, so they
  // travel as text and are only ever compared as BigInt.
  var lastSeq = String(live.last_seq || "0");
  var failures = 0;

  function merge(name, points) {
    (points || []).forEach(function (p) { curves[name].set(p[0], p[1]); });
  }
  function sorted(name) {
    return Array.from(curves[name].entries()).sort(function (a, b) { return a[0] - b[0]; });
  }
  ["train", "eval", "lr"].forEach(function (name) { merge(name, live[name]); });

  function byId(id) { return document.getElementById(id); }
  function setText(id, text) { var node = byId(id); if (node) { node.textContent = text; } }

  function redraw() {
    var train = sorted("train"), evalPoints = sorted("eval"), lr = sorted("lr");
    var loss = byId("loss-chart"), lrChart = byId("lr-chart");
    loss.replaceChildren(TuningLabCharts.lineChart([["train", train], ["eval", evalPoints]],
      { title: "Loss", xLabel: "step", yLabel: "loss", width: 640, height: 280 }));
    loss.setAttribute("data-train-points", String(train.length));
    loss.setAttribute("data-eval-points", String(evalPoints.length));
    lrChart.replaceChildren(TuningLabCharts.lineChart([["learning rate", lr]],
      { title: "Learning rate", xLabel: "step", yLabel: "lr", width: 640, height: 200 }));
    lrChart.setAttribute("data-points", String(lr.length));
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) { return "\u2013"; }
    seconds = Math.max(0, Math.round(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }

  function fixed(value, digits) {
    return (value === null || value === undefined) ? "\u2013" : Number(value).toFixed(digits);
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
  }

  function showCheckpoints(rows) {
    var body = document.querySelector("#checkpoints tbody");
    if (!body) { return; }
    var fresh = document.createDocumentFragment();
    rows.forEach(function (c) {
      var tr = document.createElement("tr");
      cell(tr, String(c.step), "num");
      cell(tr, c.name);
      cell(tr, fixed(c.loss, 4), "num");
      cell(tr, fixed(c.eval_loss, 4), "num");
      cell(tr, c.saved);
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var empty = document.createElement("tr");
      empty.className = "empty-row";
      var td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = "No checkpoints yet.";
      empty.appendChild(td);
      fresh.appendChild(empty);
    }
    body.replaceChildren(fresh);
  }

  function appendEvents(events) {
    var list = byId("events");
    if (!list || !live.append_events || !events.length) { return; }
    var placeholder = list.querySelector(".empty-row");
    if (placeholder) { placeholder.remove(); }
    events.forEach(function (e) {  // oldest first: each goes on top
      if (list.querySelector('li[data-seq="' + String(e.seq) + '"]')) { return; }
      var li = document.createElement("li");
      li.className = "event level-" + e.level + " type-" + e.type;
      li.setAttribute("data-seq", String(e.seq));
      var time = document.createElement("time");
      time.setAttribute("datetime", e.created_at);
      time.textContent = String(e.created_at).slice(11, 19);
      var level = document.createElement("span");
      level.className = "level";
      level.textContent = e.level;
      var message = document.createElement("span");
      message.className = "message";
      message.textContent = e.message;
      li.append(time, " ", level, " ", message);
      list.insertBefore(li, list.firstChild);
    });
  }

  function showState(data) {
    var status = byId("job-status");
    status.textContent = data.status;
    status.className = "status status-" + data.status;
    var bar = byId("progress-bar");
    bar.value = data.progress.percent;
    bar.textContent = data.progress.percent + "%";
    setText("progress-text", data.progress.percent + "% \u00b7 step " + data.progress.step + " / " + data.progress.total_steps);
    var eta = byId("eta");
    eta.setAttribute("data-seconds", data.eta_seconds === null ? "" : String(data.eta_seconds));
    eta.textContent = duration(data.eta_seconds);
    setText("queue-position", data.queue_position ? "#" + data.queue_position : "\u2013");
    var requested = byId("cancel-requested");
    if (requested) { requested.hidden = !(data.cancel_requested && !data.terminal); }
    if (data.error) {
      var box = byId("job-error");
      var code = document.createElement("strong");
      code.id = "job-error-code";
      code.textContent = data.error.code || "error";
      var message = document.createElement("span");
      message.id = "job-error-message";
      message.textContent = data.error.message || "";
      box.replaceChildren(code, ": ", message);
      if (data.error.suggestion) {
        var p = document.createElement("p");
        p.className = "suggestion";
        p.textContent = data.error.suggestion;
        box.appendChild(p);
      }
      box.hidden = false;
    }
    if (data.model_version) {
      var result = byId("job-result");
      var link = document.createElement("a");
      link.href = data.model_version.url;
      link.textContent = data.model_version.name + " v" + data.model_version.version;
      result.replaceChildren("Result: ", link);
      result.hidden = false;
    }
    if (data.terminal) {
      var form = byId("cancel-form");
      if (form) { form.remove(); }
    }
  }

  function apply(data) {
    var changed = false;
    ["train", "eval", "lr"].forEach(function (name) {
      if (data[name] && data[name].length) { merge(name, data[name]); changed = true; }
    });
    if (changed) { redraw(); }
    appendEvents(data.events || []);
    showCheckpoints(data.checkpoints || []);
    showState(data);
    var next = String(data.last_seq_str || "0");
    if (BigInt(next) > BigInt(lastSeq)) { lastSeq = next; }
    live.terminal = data.terminal;
  }

  function poll() {
    var url = live.live_url + "?after_seq=" + encodeURIComponent(lastSeq);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        apply(data);
        if (!data.terminal) { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () {
        failures += 1;  // a restart or a dropped connection: back off, keep trying
        window.setTimeout(poll, Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures)));
      });
  }

  var eta = byId("eta");
  if (eta && eta.getAttribute("data-seconds")) { eta.textContent = duration(Number(eta.getAttribute("data-seconds"))); }
  if (!live.terminal) { window.setTimeout(poll, POLL_MS); }
})();
