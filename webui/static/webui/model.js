/* Model page, live: polls live.json every 2 s and redraws the A/B route and the traffic table.
 * Texts go in through textContent only.
 */
(function () {
  "use strict";

  var POLL_MS = 2000, MAX_BACKOFF_MS = 30000;
  var dataNode = document.getElementById("model-live-data");
  if (!dataNode) { return; }
  var config = JSON.parse(dataNode.textContent);
  var failures = 0;
  var DASH = "\u2013";

  function text(value, digits) {
    if (value === null || value === undefined) { return DASH; }
    return digits === undefined ? String(value) : Number(value).toFixed(digits);
  }

  function cell(row, value, key) {
    var td = document.createElement("td");
    td.className = "num";
    if (key) { td.setAttribute("data-key", key); }
    td.textContent = value;
    row.appendChild(td);
    return td;
  }

  function showTraffic(versions) {
    var body = document.querySelector("#traffic tbody");
    if (!body) { return; }
    var fresh = document.createDocumentFragment();
    versions.forEach(function (v) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-version", String(v.version));
      cell(tr, "v" + v.version);
      var roles = cell(tr, (v.roles || []).join(", "));
      roles.className = "";
      cell(tr, v.share === null ? DASH : v.share + "%");
      cell(tr, text(v.requests), "requests");
      cell(tr, text(v.errors), "errors");
      cell(tr, text(v.error_rate, 3), "error_rate");
      cell(tr, text(v.prompt_tokens), "prompt_tokens");
      cell(tr, text(v.completion_tokens), "completion_tokens");
      cell(tr, text(v.mean_latency_ms), "mean_latency_ms");
      cell(tr, text(v.max_latency_ms), "max_latency_ms");
      cell(tr, text(v.shadow_requests), "shadow_requests");
      cell(tr, text(v.shadow_errors), "shadow_errors");
      fresh.appendChild(tr);
    });
    if (!versions.length) {
      var empty = document.createElement("tr");
      empty.className = "empty-row";
      var td = document.createElement("td");
      td.colSpan = 12;
      td.textContent = "No versions serve yet.";
      empty.appendChild(td);
      fresh.appendChild(empty);
    }
    body.replaceChildren(fresh);
  }

  function tag(content) {
    var span = document.createElement("span");
    span.className = "tag";
    span.textContent = content;
    return span;
  }

  function showRoute(route) {
    var box = document.getElementById("route");
    if (!box) { return; }
    var p = document.createElement("p");
    if (!route) {
      p.className = "muted";
      p.textContent = "No route: bare requests go to the production alias (else the newest version).";
    } else {
      var sticky = document.createElement("strong");
      sticky.textContent = route.sticky;
      p.append("Sticky by ", sticky, ". Splits: ");
      route.splits.forEach(function (s) { p.append(tag("v" + s.version + ": " + s.weight), " "); });
      p.append("Shadow: ");
      p.append(route.shadow ? tag("v" + route.shadow.version + " at " + route.shadow.percent + "%") : "none");
    }
    box.replaceChildren(p);
  }

  function poll() {
    fetch(config.live_url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        showRoute(data.route);
        showTraffic(data.versions || []);
        window.setTimeout(poll, POLL_MS);
      })
      .catch(function () {
        failures += 1;
        window.setTimeout(poll, Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures)));
      });
  }

  window.setTimeout(poll, POLL_MS);
})();
