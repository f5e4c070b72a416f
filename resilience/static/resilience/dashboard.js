/*
 * The upstream dashboard's script (templates/resilience/dashboard.html).
 *
 * The page arrives with its data; this draws each card's chart from the
 * embedded snapshot, then polls the JSON endpoint every `data-refresh-seconds`
 * and updates the cards in place. Numbers come formatted by the server
 * (`display`), so the page and its refreshes always read the same way. The
 * polling, its failures and an expired session are live.js's.
 */
(function () {
  "use strict";

  function fill(root, values) {
    root.querySelectorAll("[data-field]").forEach(function (node) {
      var key = node.getAttribute("data-field");
      if (Object.prototype.hasOwnProperty.call(values, key)) {
        node.textContent = values[key];
      }
    });
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) { return "\u2014"; }
    return ms >= 1000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms) + " ms";
  }

  var AXIS_FONT = "10px system-ui, sans-serif";
  var WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 1e6, 1e7];

  function formatTick(ms) {
    if (ms >= 1000) { return +(ms / 1000).toFixed(2) + " s"; }
    return (ms < 10 ? +ms.toFixed(1) : Math.round(ms)) + " ms";
  }

  function count(v) { return v === null || v === undefined ? "\u2014" : String(v); }

  function atLeastOne(u, min, max) { return [0, Math.max(1, max)]; }

  // Each card's last hour with the vendored uPlot (vendor/uplot): calls per
  // minute as bars with the failed ones in red over them (same scale), p95
  // latency as a line on its own scale (right axis, broken where no call
  // reached the upstream); hovering a minute shows its values in the legend.
  function drawChart(el, series) {
    if (typeof uPlot === "undefined") { return; }
    var data = [series.map(function (b) { return Date.parse(b.start) / 1000; }),
                // Empty minutes have no bar (a zero-height bar would still draw its outline).
                series.map(function (b) { return b.calls || null; }),
                series.map(function (b) { return b.errors || null; }),
                series.map(function (b) { return b.p95_ms; })];
    var width = Math.max(200, el.clientWidth);
    el.rsSeries = series;  // the legend reads the counts from here (0 rather than no bar)
    if (el.rsChart && el.rsChart.width === width) { el.rsChart.setData(data); return; }
    if (el.rsChart) { el.rsChart.destroy(); }
    var bars = uPlot.paths.bars({size: [0.9, 12]});
    var quiet = getComputedStyle(document.body).getPropertyValue("--body-quiet-color") || "#666";
    var grid = {stroke: "rgba(128,128,128,.18)", width: 1};
    el.rsChart = new uPlot({
      width: width, height: 120, cursor: {points: {show: false}},
      // Half a minute of room at each end: the edge bars are drawn whole.
      scales: {x: {time: true, range: function (u, min, max) { return [min - 30, max + 30]; }},
               n: {range: atLeastOne}, ms: {range: atLeastOne}},
      axes: [
        {stroke: quiet, grid: grid, ticks: grid, size: 28, font: AXIS_FONT},
        {scale: "n", stroke: quiet, grid: grid, ticks: grid, size: 34, font: AXIS_FONT, incrs: WHOLE,
         label: "calls/min", labelSize: 12, labelFont: AXIS_FONT},
        {scale: "ms", side: 1, stroke: quiet, grid: {show: false}, ticks: grid, size: 56, font: AXIS_FONT,
         label: "p95", labelSize: 12, labelFont: AXIS_FONT,
         values: function (u, vals) { return vals.map(formatTick); }}
      ],
      series: [
        {value: function (u, v) { return v === null ? "\u2014" : new Date(v * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}); }},
        {label: "calls", scale: "n", stroke: "#79aec8", fill: "#79aec8", paths: bars, points: {show: false},
         value: function (u, v, si, i) { return i === null ? "\u2014" : count(el.rsSeries[i].calls); }},
        {label: "errors", scale: "n", stroke: "#c62828", fill: "#c62828", paths: bars, points: {show: false},
         value: function (u, v, si, i) { return i === null ? "\u2014" : count(el.rsSeries[i].errors); }},
        {label: "p95", scale: "ms", stroke: "#6a1b9a", width: 1.5, value: function (u, v) { return formatMs(v); }}
      ]
    }, data, el);
  }

  function renderCard(card, u) {
    card.setAttribute("data-upstream", u.name);
    card.className = "rs-card state-" + u.display.state + (u.enabled ? "" : " rs-disabled");
    fill(card, Object.assign({name: u.name, base_url: u.base_url, accounts: u.accounts || "",
                              admission_line: u.admission_line || ""}, u.display));
    card.querySelector("[data-row=admission]").hidden = !u.admission_line;
    card.querySelector(".rs-off").hidden = u.enabled;
    // The per-upstream page, relative to /dashboard/.
    card.querySelector("[data-link]").setAttribute("href", "upstreams/" + encodeURIComponent(u.name));
    drawChart(card.querySelector("[data-chart]"), u.series);
  }

  function render(root, snapshot) {
    var container = root.querySelector("#rs-cards");
    var template = root.querySelector("#rs-card-template");
    var existing = {};
    container.querySelectorAll(".rs-card").forEach(function (card) {
      existing[card.getAttribute("data-upstream")] = card;
    });
    var empty = container.querySelector(".rs-empty");
    if (empty && snapshot.upstreams.length) { empty.remove(); }
    snapshot.upstreams.forEach(function (u) {
      var card = existing[u.name];
      delete existing[u.name];
      if (!card) { card = template.content.firstElementChild.cloneNode(true); }
      container.appendChild(card);  // appending an existing card keeps the server's order
      renderCard(card, u);  // once in the page: its chart takes the card's width
    });
    Object.keys(existing).forEach(function (name) { existing[name].remove(); });

    renderAlerts(root.querySelector("#rs-alerts"), snapshot.alerts || []);

    var cache = root.querySelector("#rs-cache");
    fill(cache, snapshot.cache.display);
    cache.classList.toggle("rs-cache-fallback", snapshot.cache.fallback);

    var time = root.querySelector('[data-field="generated_at"]');
    time.setAttribute("datetime", snapshot.generated_at);
    time.textContent = new Date(snapshot.generated_at).toLocaleTimeString();
  }

  function renderAlerts(section, alerts) {
    if (!section) { return; }
    var body = section.querySelector("tbody");
    body.textContent = "";
    alerts.forEach(function (a) {
      var row = document.createElement("tr");
      row.className = "rs-severity-" + a.severity;
      [a.severity, a.rule, a.subject, a.condition, a.value === null ? "\u2014" : String(a.value),
       a.fired_at ? new Date(a.fired_at).toLocaleTimeString() : ""].forEach(function (text) {
        var cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      });
      body.appendChild(row);
    });
    section.querySelector("[data-field=alerts_count]").textContent = String(alerts.length);
    section.classList.toggle("rs-alerts-quiet", alerts.length === 0);
  }

  function start() {
    var root = document.getElementById("rs-root");
    if (!root) { return; }
    var url = root.getAttribute("data-url");
    var every = 1000 * (parseInt(root.getAttribute("data-refresh-seconds"), 10) || 5);
    render(root, JSON.parse(document.getElementById("rs-snapshot").textContent));
    window.rsLive.poll(root, url, every, function (snapshot) { render(root, snapshot); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
