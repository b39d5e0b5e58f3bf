// The live dashboard: the campaign's websocket (htmx's ws extension) reports each judgement as a small
// JSON event; we then refetch the figures, at most once a second, and never drop the last event of a burst.
(function () {
  "use strict";
  const live = document.getElementById("dashboard-live");
  if (!live) return;
  const MIN_INTERVAL_MS = 1000;
  let last = 0, timer = null, busy = false, again = false, opened = false;

  function schedule() {
    if (busy) { again = true; return; }  // one more refresh once the current one lands
    if (timer === null) timer = setTimeout(refresh, Math.max(0, last + MIN_INTERVAL_MS - Date.now()));
  }

  function refresh() {
    timer = null; busy = true; again = false; last = Date.now();
    htmx.ajax("GET", live.dataset.refreshUrl, { target: "#dashboard", swap: "outerHTML" })
      .finally(function () { busy = false; if (again) schedule(); });
  }

  live.addEventListener("htmx:wsBeforeMessage", function (event) {
    event.preventDefault();  // our messages are events, not HTML for the extension to swap in
    schedule();
  });
  live.addEventListener("htmx:wsOpen", function () {
    if (opened) schedule();  // back after a drop: catch up on what we missed
    opened = true;
    live.dataset.connected = "true";
  });
  live.addEventListener("htmx:wsClose", function () { live.dataset.connected = "false"; });
})();
