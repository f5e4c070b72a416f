/*
 * The live refresh both dashboard pages share (dashboard.js, upstream.js):
 * `rsLive.poll(root, url, every, onData)` fetches `url` every `every`
 * milliseconds while the page is visible, hands each JSON answer to
 * `onData` and says how it went in the root's `[data-field="live"]`. A
 * failed refresh is shown and retried; an expired session (401/403, or a
 * redirect to the login page instead of JSON) stops polling and asks for a
 * reload, since a login page will not turn into data.
 */
(function () {
  "use strict";

  function setLive(root, state, text) {
    var live = root.querySelector('[data-field="live"]');
    live.setAttribute("data-state", state);
    live.textContent = text;
  }

  function poll(root, url, every, onData) {
    function schedule() { window.setTimeout(refresh, every); }

    function refresh() {
      if (document.hidden) { schedule(); return; }
      fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin", cache: "no-store"})
        .then(function (response) {
          var json = (response.headers.get("Content-Type") || "").indexOf("application/json") === 0;
          if (response.redirected || response.status === 401 || response.status === 403 || !json) {
            setLive(root, "error", "signed out: reload the page to log in \u00b7 last update");
            return;
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json().then(function (data) {
            onData(data);
            setLive(root, "ok", "live, every " + every / 1000 + " s \u00b7 updated");
            schedule();
          });
        })
        .catch(function (err) {
          setLive(root, "error", "refresh failed (" + err.message + "), retrying \u00b7 last update");
          schedule();
        });
    }

    setLive(root, "ok", "live, every " + every / 1000 + " s \u00b7 updated");
    schedule();
  }

  window.rsLive = {poll: poll, setLive: setLive};
}());
