// A run's page keeps itself true: it polls the run's small JSON state every 2 s until the run ends,
// updating status, progress, message, log and error in place; at the end it swaps in the results once.
// The metric plots (drawn on the server) are re-fetched while it runs, at most every 10 s and only
// when the run has recorded new points.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root || root.dataset.finished === "true") return;
  const part = (id) => root.querySelector(`[data-testid="${id}"]`);
  const status = part("run-status"), bar = part("run-progress"), message = part("run-message");
  const log = part("run-log"), logEmpty = part("run-log-empty"), error = part("run-error"), times = part("run-times");
  const cancel = part("run-cancel"), worker = part("run-worker");
  const PLOT_EVERY = 5;  // polls (of 2 s) between two plot refreshes
  let plottedPoints = Number(root.dataset.metricPoints), pollsSincePlot = PLOT_EVERY;

  function show(state) {
    status.textContent = state.status;
    status.className = `status status-${state.status}`;
    if (state.progress > 0 || state.finished) bar.value = state.progress; else bar.removeAttribute("value");
    message.textContent = state.message;
    times.textContent = state.times;
    if (worker) worker.textContent = state.worker ? ` · worker ${state.worker}` : "";
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = state.log;
    log.hidden = !state.log;
    logEmpty.hidden = Boolean(state.log);
    if (atBottom) log.scrollTop = log.scrollHeight;
    error.querySelector("pre").textContent = state.error;
    error.hidden = !state.error;
    if (state.finished && cancel) cancel.remove();
  }

  function refreshPlots(points) {
    pollsSincePlot += 1;
    if (points === plottedPoints || pollsSincePlot < PLOT_EVERY) return;
    plottedPoints = points;
    pollsSincePlot = 0;
    htmx.ajax("GET", root.dataset.metricsUrl, { source: root, target: "#run-metrics", swap: "outerHTML" });
  }

  function finish() {
    root.dataset.finished = "true";
    htmx.ajax("GET", root.dataset.pageUrl, { source: root, target: "#run-details", select: "#run-details", swap: "outerHTML" });
  }

  async function poll() {
    try {
      const response = await fetch(root.dataset.stateUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const state = await response.json();
        show(state);
        if (state.finished) return finish();
        refreshPlots(state.metric_points);
      }
    } catch (e) { /* offline for a moment: try again at the next tick */ }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
