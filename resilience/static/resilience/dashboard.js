/*
 * The upstream dashboard's script (templates/resilience/dashboard.html).
 *
 * The page arrives with its data; this draws each card's chart from the
 * embedded snapshot, then polls the JSON endpoint every `data-refresh-seconds`
 * and updates the cards in place. Numbers come formatted by the server
 * (`display`), so the page and its refreshes always read the same way. A
 * failed refresh is shown on the page and retried; an expired session stops
 * polling and asks for a reload (which leads to the login).
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var W = 320, H = 96, TOP = 6, BOTTOM = 14;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function fill(root, values) {
    root.querySelectorAll("[data-field]").forEach(function (node) {
      var key = node.getAttribute("data-field");
      if (Object.prototype.hasOwnProperty.call(values, key)) {
        node.textContent = values[key];
      }
    });
  }

  function niceMax(value) {
    if (value <= 0) { return 1; }
    var magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (value <= steps[i] * magnitude) { return steps[i] * magnitude; }
    }
    return 10 * magnitude;
  }

  function formatMs(ms) {
    return ms >= 1000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms) + " ms";
  }

  // Bars: calls per minute (failed part in red, stacked at the bottom);
  // line: p95 latency per minute on its own scale, broken where no call
  // reached the upstream.
  function drawChart(svg, series, caption) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var n = series.length;
    if (!n) { return; }
    var plotH = H - TOP - BOTTOM, baseY = H - BOTTOM, step = W / n, barW = Math.max(1, step - 1);
    var maxCalls = niceMax(Math.max.apply(null, series.map(function (b) { return b.calls; })));
    var latencies = series.map(function (b) { return b.p95_ms; }).filter(function (v) { return v !== null; });
    var maxP95 = niceMax(latencies.length ? Math.max.apply(null, latencies) : 0);

    el("line", {x1: 0, x2: W, y1: TOP, y2: TOP, "class": "rs-grid"}, svg);
    el("line", {x1: 0, x2: W, y1: baseY, y2: baseY, "class": "rs-axis"}, svg);
    var bars = el("g", {"class": "rs-bars"}, svg);
    var segments = [], current = [];
    series.forEach(function (b, i) {
      var x = i * step;
      if (b.calls) {
        var h = plotH * b.calls / maxCalls, eh = plotH * b.errors / maxCalls;
        var bar = el("rect", {x: x.toFixed(2), y: (baseY - h).toFixed(2), width: barW.toFixed(2),
                              height: (h - eh).toFixed(2), "class": "rs-bar-ok"}, bars);
        var tip = new Date(b.start).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}) + ": " +
          b.calls + " calls, " + b.errors + " failed" + (b.p95_ms === null ? "" : ", p95 " + formatMs(b.p95_ms));
        el("title", {}, bar).textContent = tip;
        if (b.errors) {
          var failed = el("rect", {x: x.toFixed(2), y: (baseY - eh).toFixed(2), width: barW.toFixed(2),
                                   height: eh.toFixed(2), "class": "rs-bar-err"}, bars);
          el("title", {}, failed).textContent = tip;
        }
      }
      if (b.p95_ms === null) {
        if (current.length) { segments.push(current); current = []; }
      } else {
        current.push((x + step / 2).toFixed(2) + "," + (baseY - plotH * b.p95_ms / maxP95).toFixed(2));
      }
    });
    if (current.length) { segments.push(current); }
    segments.forEach(function (points) {
      if (points.length === 1) {
        var xy = points[0].split(",");
        el("circle", {cx: xy[0], cy: xy[1], r: 2.2, "class": "rs-p95-dot"}, svg);
      } else {
        el("polyline", {points: points.join(" "), "class": "rs-p95"}, svg);
      }
    });
    el("text", {x: 0, y: H - 2, "class": "rs-tick"}, svg).textContent = "\u221260 min";
    el("text", {x: W, y: H - 2, "class": "rs-tick rs-tick-end"}, svg).textContent = "now";
    if (caption) {
      caption.textContent = "(top: " + maxCalls + "/min, " + (latencies.length ? formatMs(maxP95) : "\u2014") + ")";
    }
  }

  function renderCard(card, u) {
    card.setAttribute("data-upstream", u.name);
    card.className = "rs-card state-" + u.display.state + (u.enabled ? "" : " rs-disabled");
    fill(card, Object.assign({name: u.name, base_url: u.base_url}, u.display));
    card.querySelector(".rs-off").hidden = u.enabled;
    // The per-upstream page, relative to /dashboard/.
    card.querySelector("[data-link]").setAttribute("href", "upstreams/" + encodeURIComponent(u.name));
    drawChart(card.querySelector("[data-chart]"), u.series, card.querySelector('[data-field="chart_scale"]'));
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
      renderCard(card, u);
      container.appendChild(card);  // appending an existing card keeps the server's order
    });
    Object.keys(existing).forEach(function (name) { existing[name].remove(); });

    var cache = root.querySelector("#rs-cache");
    fill(cache, snapshot.cache.display);
    cache.classList.toggle("rs-cache-fallback", snapshot.cache.fallback);

    var time = root.querySelector('[data-field="generated_at"]');
    time.setAttribute("datetime", snapshot.generated_at);
    time.textContent = new Date(snapshot.generated_at).toLocaleTimeString();
  }

  function setLive(root, state, text) {
    var live = root.querySelector('[data-field="live"]');
    live.setAttribute("data-state", state);
    live.textContent = text;
  }

  function start() {
    var root = document.getElementById("rs-root");
    if (!root) { return; }
    var url = root.getAttribute("data-url");
    var every = 1000 * (parseInt(root.getAttribute("data-refresh-seconds"), 10) || 5);
    render(root, JSON.parse(document.getElementById("rs-snapshot").textContent));
    setLive(root, "ok", "live, every " + every / 1000 + " s \u00b7 updated");

    function schedule() { window.setTimeout(refresh, every); }

    function refresh() {
      if (document.hidden) { schedule(); return; }
      fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin", cache: "no-store"})
        .then(function (response) {
          var json = (response.headers.get("Content-Type") || "").indexOf("application/json") === 0;
          if (response.redirected || response.status === 401 || response.status === 403 || !json) {
            setLive(root, "error", "signed out: reload the page to log in \u00b7 last update");
            return;  // no more polling: a login page will not turn into data
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json().then(function (snapshot) {
            render(root, snapshot);
            setLive(root, "ok", "live, every " + every / 1000 + " s \u00b7 updated");
            schedule();
          });
        })
        .catch(function (err) {
          setLive(root, "error", "refresh failed (" + err.message + "), retrying \u00b7 last update");
          schedule();
        });
    }

    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
