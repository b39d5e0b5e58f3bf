// The labeling widget: keyboard-first ranking with ties, drag and drop, and pairwise choices.
// State is one list of groups of response ids (best first); the hidden `ranking` input mirrors it.
(function () {
  "use strict";

  let groups = [];       // [[id], [id, id], ...]
  let tieNext = false;   // "=" pressed: the next pick joins the last group
  let allBad = false;    // pairwise "both bad"
  let shownAt = Date.now();
  let stateForm = null;  // the form the state belongs to: a new task (a new form) starts afresh

  const form = () => {
    const f = document.getElementById("task-form");
    if (f && f !== stateForm) {  // checked on every access, so no keypress can land on a stale state
      stateForm = f;
      groups = []; tieNext = false; allBad = false; shownAt = Date.now();
    }
    return f;
  };
  const responses = () => Array.from(form().querySelectorAll(".response"));
  const ids = () => responses().map((el) => Number(el.dataset.responseId));
  const isPairwise = () => form().dataset.taskType === "pairwise";
  const picked = () => groups.flat();

  function reset() {
    groups = []; tieNext = false; allBad = false; shownAt = Date.now(); render();
  }

  function pick(index) {
    const id = ids()[index - 1];
    if (id === undefined || picked().includes(id)) return;
    if (tieNext && groups.length) groups[groups.length - 1].push(id);
    else groups.push([id]);
    tieNext = false; render();
  }

  function undo() {
    const last = groups[groups.length - 1];
    if (!last) return;
    last.pop();
    if (!last.length) groups.pop();
    tieNext = false; render();
  }

  function choosePair(choice) {
    const [a, b] = ids();
    allBad = choice === "bad";
    if (choice === "a") groups = [[a], [b]];
    else if (choice === "b") groups = [[b], [a]];
    else groups = [[a, b]];
    render();
  }

  // The ranking to submit: a single unpicked response is placed last for the labeler.
  function completed() {
    const rest = ids().filter((id) => !picked().includes(id));
    if (rest.length === 1) return groups.concat([rest]);
    return rest.length === 0 ? groups : null;
  }

  // The pairwise choice the state stands for: "a", "b", "tie", "bad", or null before any.
  function pairChoice() {
    if (!isPairwise() || !groups.length) return null;
    if (allBad) return "bad";
    return groups.length === 1 ? "tie" : groups[0][0] === ids()[0] ? "a" : "b";
  }

  function letterOf(id) {
    const el = form().querySelector(`.response[data-response-id="${id}"]`);
    return el ? el.dataset.letter : "?";
  }

  function render() {
    const f = form();
    if (!f) return;
    const full = completed();
    f.querySelector('input[name="ranking"]').value = full ? JSON.stringify(full) : "";
    f.querySelector('button[type="submit"]').disabled = !full;
    const choice = pairChoice();
    responses().forEach((el) => {
      const id = Number(el.dataset.responseId);
      const place = groups.findIndex((g) => g.includes(id));
      const mark = el.querySelector(".rank-mark");
      if (isPairwise()) {
        // the winner stands out from the other card; a tie or "both bad" marks both alike
        const won = (choice === "a" || choice === "b") && groups[0][0] === id;
        el.classList.toggle("preferred", won);
        el.classList.toggle("not-preferred", (choice === "a" || choice === "b") && !won);
        mark.textContent = won ? "Better" : choice === "tie" ? "Tie" : choice === "bad" ? "Bad" : "";
      } else {
        el.classList.toggle("ranked", place >= 0);
        mark.textContent = place >= 0 ? `#${place + 1}` : "";
      }
    });
    f.querySelectorAll("[data-choice]").forEach((btn) => {
      btn.classList.toggle("chosen", btn.dataset.choice === choice);
      btn.setAttribute("aria-pressed", String(btn.dataset.choice === choice));
    });
    f.querySelectorAll('input[name="flags"][value="all_bad"]').forEach((box) => { if (isPairwise()) box.checked = allBad; });
    const list = f.querySelector(".rank-list");
    if (list) renderList(list);
  }

  function renderList(list) {
    list.innerHTML = "";
    groups.forEach((group, gi) => {
      group.forEach((id, i) => {
        const li = document.createElement("li");
        li.draggable = true;
        li.dataset.responseId = id;
        li.className = i > 0 ? "tied" : "";
        li.innerHTML = `<span class="handle" aria-hidden="true">⋮⋮</span> <span class="place">${i > 0 ? "=" : gi + 1}</span> Response ${letterOf(id)}`;
        const tie = document.createElement("button");
        tie.type = "button"; tie.className = "link"; tie.textContent = i > 0 ? "untie" : "= tie with above";
        tie.hidden = gi === 0 && i === 0;
        tie.addEventListener("click", () => toggleTie(id));
        const up = document.createElement("button");
        up.type = "button"; up.className = "link"; up.textContent = "↑"; up.setAttribute("aria-label", "Move up");
        up.hidden = gi === 0 && i === 0;  // nothing above the first row
        up.addEventListener("click", () => move(id, -1));
        li.append(" ", up, " ", tie);
        li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(id)));
        li.addEventListener("dragover", (e) => e.preventDefault());
        li.addEventListener("drop", (e) => { e.preventDefault(); dropBefore(Number(e.dataTransfer.getData("text/plain")), id); });
        list.append(li);
      });
    });
    if (!groups.length) list.innerHTML = '<li class="placeholder">Nothing ranked yet.</li>';
  }

  // Flat order with tie markers, for moves; rebuilt into groups afterwards.
  function flat() { return groups.flatMap((g) => g.map((id, i) => ({ id, tied: i > 0 }))); }
  function fromFlat(items) {
    groups = [];
    items.forEach((it, i) => { if (it.tied && i > 0) groups[groups.length - 1].push(it.id); else groups.push([it.id]); });
    render();
  }
  function toggleTie(id) { fromFlat(flat().map((it) => (it.id === id ? { id, tied: !it.tied } : it))); }
  function move(id, delta) {
    const items = flat(); const i = items.findIndex((it) => it.id === id); const j = i + delta;
    if (j < 0 || j >= items.length) return;
    [items[i], items[j]] = [items[j], items[i]];
    items[0].tied = false; fromFlat(items);
  }
  function dropBefore(dragged, target) {
    if (dragged === target) return;
    const items = flat(); const from = items.findIndex((it) => it.id === dragged);
    if (from < 0) return;
    const [it] = items.splice(from, 1);
    items.splice(items.findIndex((x) => x.id === target), 0, { id: it.id, tied: false });
    items[0].tied = false; fromFlat(items);
  }

  function submit() {
    const f = form();
    if (!completed()) return;
    render();
    f.querySelector('input[name="time_spent_ms"]').value = String(Date.now() - shownAt);
    // A key pressed the instant a task is swapped in can beat htmx to the new form: wire it first,
    // so the submit always goes through htmx (never as a plain page navigation).
    if (window.htmx) window.htmx.process(f);
    f.requestSubmit();
  }

  document.addEventListener("keydown", (e) => {
    const f = form();
    if (!f || e.altKey || e.metaKey) return;
    const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName);
    if (typing) {
      if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); submit(); }
      return;
    }
    const key = e.key.toLowerCase();
    if (key === "enter") { e.preventDefault(); submit(); return; }
    if (key === "s") { e.preventDefault(); f.querySelector('[data-testid="skip"]').click(); return; }
    if (isPairwise()) {
      const choice = { "1": "a", a: "a", "2": "b", b: "b", "=": "tie", t: "tie", "0": "bad", x: "bad" }[key];
      if (choice) { e.preventDefault(); choosePair(choice); }
      return;
    }
    if (/^[1-8]$/.test(key)) { e.preventDefault(); pick(Number(key)); }
    else if (key === "=") { e.preventDefault(); if (groups.length) tieNext = true; }
    else if (key === "backspace") { e.preventDefault(); undo(); }
    else if (key === "escape") { e.preventDefault(); reset(); }
  });

  document.addEventListener("click", (e) => {
    const f = form();
    if (!f || !f.contains(e.target)) return;
    const choice = e.target.closest("[data-choice]");
    if (choice) { choosePair(choice.dataset.choice); return; }
    if (e.target.closest('[data-action="reset"]')) { reset(); return; }
    const more = e.target.closest('[data-action="show-all"]');
    if (more) { more.closest(".response").classList.add("expanded"); more.hidden = true; return; }
    const card = e.target.closest(".response");
    if (card && !isPairwise() && !e.target.closest(".rating")) pick(Number(card.dataset.index));
  });

  document.addEventListener("submit", (e) => {
    if (e.target.id === "task-form" && !completed()) e.preventDefault();
  });

  // Long responses are capped; "Show all" appears only where the cap hides something.
  function offerShowAll() {
    document.querySelectorAll(".response:not(.expanded) .response-text").forEach((text) => {
      text.parentElement.querySelector('[data-action="show-all"]').hidden = text.scrollHeight <= text.clientHeight + 1;
    });
  }

  // Guidelines: open on a labeler's first task in a campaign, collapsed after (remembered in this browser).
  const guidelines = () => document.querySelector("details.guidelines[data-campaign]");
  const seenKey = (g) => `arbiter:guidelines-seen:${g.dataset.campaign}`;
  function collapseSeenGuidelines() {
    const g = guidelines();
    try { if (g && localStorage.getItem(seenKey(g))) g.open = false; } catch (e) { /* storage off: leave them open */ }
  }
  // (beforeSwap: the submitted form is still in the document, so the event reaches this listener)
  document.addEventListener("htmx:beforeSwap", (e) => {
    const g = guidelines();
    if (!g || e.detail.xhr.status !== 200 || e.detail.requestConfig.elt.id !== "task-form") return;
    try { localStorage.setItem(seenKey(g), "1"); } catch (err) { /* storage off */ }
    g.open = false;
  });

  // A new task was swapped in (or the page loaded): show its (fresh) state.
  document.addEventListener("htmx:load", () => { if (form()) { render(); offerShowAll(); } });
  document.addEventListener("DOMContentLoaded", () => { collapseSeenGuidelines(); if (form()) { render(); offerShowAll(); } });
})();
