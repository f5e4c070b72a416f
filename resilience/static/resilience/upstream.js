/*
 * The per-upstream page's script (templates/resilience/upstream.html).
 *
 * Draws the charts with the vendored uPlot (static/resilience/vendor/uplot:
 * axes with units, a hover legend with each bucket's values) from the
 * embedded data, then refreshes everything from `data-url` every
 * `data-refresh-seconds`. The breaker timeline is a strip of coloured bands
 * (a title on each gives its state and times); failures are a table whose
 * request ids open the call-log list filtered by that id. The polling, its
 * failures and an expired session are live.js's.
 */
(function () {
  "use strict";

  var OUTCOME_COLOURS = {
    ok: "#79aec8", cache_hit: "#4db6ac", shared: "#80cbc4", stale: "#ffb74d",
    http_error: "#c62828", timeout: "#ad1457", connection_error: "#6a1b9a",
    breaker_open: "#ef6c00", rejected: "#5d4037", refused: "#757575"
  };
  var charts = {};

  function fmtMs(v) {
    if (v === null || v === undefined) { return "\u2014"; }
    return v >= 1000 ? (v / 1000).toFixed(2) + " s" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
  }
  function fmtCount(v) { return v === null || v === undefined ? "\u2014" : String(Math.round(v)); }
  function fmtTime(epoch) {
    return new Date(epoch * 1000).toLocaleString([], {month: "short", day: "numeric", hour: "2-digit",
                                                      minute: "2-digit"});
  }

  function fill(root, values) {
    root.querySelectorAll("[data-field]").forEach(function (node) {
      var key = node.getAttribute("data-field");
      if (Object.prototype.hasOwnProperty.call(values, key)) { node.textContent = values[key]; }
    });
  }

  function size(el) {
    return {width: Math.max(240, el.clientWidth), height: 220};
  }

  function draw(key, el, opts, data) {
    if (charts[key]) { charts[key].destroy(); }
    opts.width = size(el).width;
    opts.height = size(el).height;
    charts[key] = new uPlot(opts, data, el);
  }

  // The time scale with half a bucket of room at each end, so edge bars are drawn whole.
  function xScale(d) {
    var half = d.series.step_seconds / 2;
    return {time: true, range: function (u, min, max) { return [min - half, max + half]; }};
  }

  function axes(unit, fmt) {
    var stroke = getComputedStyle(document.body).getPropertyValue("--body-quiet-color") || "#666";
    var grid = {stroke: "rgba(128,128,128,.2)", width: 1};
    return [
      {stroke: stroke, grid: grid, ticks: grid},
      {stroke: stroke, grid: grid, ticks: grid, label: unit, labelSize: 18, size: 56,
       values: function (u, vals) { return vals.map(fmt); }}
    ];
  }

  function latencyChart(el, d) {
    var s = d.series;
    draw("latency", el, {
      scales: {x: xScale(d)},
      axes: axes("milliseconds", function (v) { return v >= 1000 ? v / 1000 + " s" : v + " ms"; }),
      series: [
        {value: function (u, v) { return v === null ? "\u2014" : fmtTime(v); }},
        {label: "p50", stroke: "#2e7d32", width: 1.5, value: function (u, v) { return fmtMs(v); }},
        {label: "p95", stroke: "#ef6c00", width: 1.5, value: function (u, v) { return fmtMs(v); }},
        {label: "p99", stroke: "#c62828", width: 1.5, value: function (u, v) { return fmtMs(v); }}
      ]
    }, [s.t, s.p50_ms, s.p95_ms, s.p99_ms]);
  }

  // uPlot has no stacking of its own: each outcome is drawn as bars up to the
  // running total (the last outcome first, so each bar shows its own share),
  // and the legend shows each outcome's own count for the hovered bucket.
  function outcomesChart(el, d) {
    var s = d.series, names = Object.keys(s.outcomes), totals = s.t.map(function () { return 0; });
    var stacked = names.map(function (name) {
      return s.outcomes[name].map(function (v, i) { totals[i] += v; return totals[i] || null; });
    });
    var bars = uPlot.paths.bars({size: [0.8, 40]});
    var series = [{value: function (u, v) { return v === null ? "\u2014" : fmtTime(v); }}];
    var data = [s.t];
    for (var k = names.length - 1; k >= 0; k--) {
      (function (name) {
        var colour = OUTCOME_COLOURS[name] || "#999";
        series.push({label: name, stroke: colour, fill: colour, paths: bars, points: {show: false},
                     value: function (u, v, si, i) { return i === null ? "\u2014" : fmtCount(s.outcomes[name][i]); }});
      }(names[k]));
      data.push(stacked[k]);
    }
    if (!names.length) {
      series.push({label: "calls", stroke: "#79aec8", value: function () { return "0"; }});
      data.push(s.calls);
    }
    draw("outcomes", el, {scales: {x: xScale(d), y: {range: function (u, min, max) { return [0, Math.max(1, max)]; }}},
                          axes: axes("calls", fmtCount), series: series}, data);
  }

  function retriesChart(el, d) {
    var s = d.series, bars = uPlot.paths.bars({size: [0.8, 40]});
    draw("retries", el, {
      scales: {x: xScale(d), y: {range: function (u, min, max) { return [0, Math.max(1, max)]; }}},
      axes: axes("count", fmtCount),
      series: [
        {value: function (u, v) { return v === null ? "\u2014" : fmtTime(v); }},
        {label: "retries", stroke: "#ef6c00", fill: "rgba(239,108,0,.5)", paths: bars, points: {show: false},
         value: function (u, v, si, i) { return i === null ? "\u2014" : fmtCount(s.retries[i]); }},
        {label: "failed calls", stroke: "#c62828", width: 2, value: function (u, v) { return fmtCount(v); }}
      ]
    }, [s.t, s.retries.map(function (v) { return v || null; }), s.errors]);
  }

  function timeline(el, d) {
    var start = d.range.start, end = Date.parse(d.generated_at) / 1000, span = Math.max(1, end - start);
    while (el.firstChild) { el.removeChild(el.firstChild); }
    d.breaker_bands.forEach(function (band) {
      var from = Math.max(start, band.start), to = Math.min(end, band.end);
      if (to < from) { return; }
      var div = document.createElement("div");
      div.className = "rs-band rs-band-" + band.state;
      div.style.left = (100 * (from - start) / span) + "%";
      div.style.width = Math.max(0.4, 100 * (to - from) / span) + "%";
      if (band.state !== "closed") { div.style.zIndex = 1; }
      div.title = band.state + ": " + fmtTime(band.start) + " \u2013 " + fmtTime(band.end);
      div.setAttribute("data-state", band.state);
      el.appendChild(div);
    });
  }

  function failures(tbody, d, calllogUrl) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    if (!d.failures.length) {
      var empty = tbody.insertRow();
      empty.className = "rs-empty-row";
      var cell = empty.insertCell();
      cell.colSpan = 8;
      cell.textContent = "No failed call in this range.";
      return;
    }
    d.failures.forEach(function (f) {
      var row = tbody.insertRow();
      var values = [new Date(f.created_at).toLocaleString(), f.method + " " + f.path,
                    f.status === null ? "\u2014" : String(f.status), f.outcome,
                    Math.round(f.latency_ms) + " ms", String(f.attempts), null, f.error];
      values.forEach(function (text, i) {
        var cell = row.insertCell();
        if (i === 1) { cell.className = "rs-path"; }
        if (i === 7) { cell.className = "rs-error"; }
        if (i === 6) {
          if (f.request_id) {
            var a = document.createElement("a");
            a.href = calllogUrl + "?request_id=" + encodeURIComponent(f.request_id);
            a.textContent = f.request_id;
            cell.appendChild(a);
          } else { cell.textContent = "\u2014"; }
        } else { cell.textContent = text; }
      });
    });
  }

  function summary(root, d) {
    var s = d.stats;
    fill(root.querySelector("#rs-summary"), {
      state: d.breaker.state, calls: String(s.calls), errors: String(s.errors),
      error_rate: (s.error_rate * 100).toFixed(1) + "%", retries: String(s.retries),
      p50: fmtMs(s.p50_ms), p95: fmtMs(s.p95_ms), p99: fmtMs(s.p99_ms), trips: String(s.breaker_trips)
    });
    root.querySelector("#rs-summary").className = "rs-panel rs-wide rs-summary state-" + d.breaker.state;
    fill(root, {range_start: fmtTime(d.range.start)});
    var time = root.querySelector('[data-field="generated_at"]');
    time.setAttribute("datetime", d.generated_at);
    time.textContent = new Date(d.generated_at).toLocaleTimeString();
  }

  function render(root, d) {
    summary(root, d);
    latencyChart(root.querySelector('[data-plot="latency"]'), d);
    outcomesChart(root.querySelector('[data-plot="outcomes"]'), d);
    retriesChart(root.querySelector('[data-plot="retries"]'), d);
    timeline(root.querySelector("[data-timeline]"), d);
    failures(root.querySelector("[data-failures]"), d, root.getAttribute("data-calllog-url"));
  }

  function start() {
    var root = document.getElementById("rs-upstream");
    if (!root || typeof uPlot === "undefined") { return; }
    var url = root.getAttribute("data-url");
    var every = 1000 * (parseInt(root.getAttribute("data-refresh-seconds"), 10) || 10);
    render(root, JSON.parse(document.getElementById("rs-detail").textContent));
    // Charts follow their panel's width (the grid reflows with the window).
    if (window.ResizeObserver) {
      var observer = new ResizeObserver(function (entries) {
        entries.forEach(function (entry) {
          var chart = charts[entry.target.getAttribute("data-plot")];
          var width = size(entry.target).width;
          if (chart && chart.width !== width) { chart.setSize({width: width, height: size(entry.target).height}); }
        });
      });
      root.querySelectorAll("[data-plot]").forEach(function (el) { observer.observe(el); });
    }

    window.rsLive.poll(root, url, every, function (data) { render(root, data); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
