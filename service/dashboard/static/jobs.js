// The jobs list: filters by status, live progress of active jobs, paging.
"use strict";

(() => {
  const { el } = SF;
  const MAX_STREAMS = 4; // a browser opens about six connections per server; leave room for everything else
  const REFRESH_MS = 4000;
  const body = document.getElementById("jobs-body");
  const empty = document.getElementById("jobs-empty");
  const more = document.getElementById("more");
  const rows = new Map(); // job id -> <tr>
  const streams = new Map(); // job id -> AbortController
  let status = new URLSearchParams(location.search).get("status") || "";
  let cursor = null;
  let extraPages = [];

  function row(view) {
    const bar = SF.progressBar();
    const tr = el("tr", { "data-job-id": view.id },
      el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(view.id)}`, class: "mono", text: view.id.slice(0, 8),
        title: view.id })),
      el("td", { class: "model" }),
      el("td", { class: "method" }),
      el("td", { class: "status" }, SF.badge(view.status)),
      el("td", { class: "progress" }, bar, el("span", { class: "label muted" })),
      el("td", { class: "created muted" }));
    update(tr, view);
    return tr;
  }

  function update(tr, view) {
    const spec = view.spec || {};
    tr.querySelector(".model").textContent = (spec.model || {}).id || "";
    tr.querySelector(".method").textContent = spec.method || "";
    SF.setBadge(tr.querySelector(".badge"), view.status);
    SF.setProgress(tr.querySelector(".bar"), view);
    const label = view.status === "failed" && view.error ? view.error.message : SF.progressText(view);
    tr.querySelector(".progress .label").textContent = label;
    tr.querySelector(".progress .label").title = label;
    tr.querySelector(".created").textContent = SF.when(view.created_at);
    tr.dataset.status = view.status;
  }

  function stream(view) {
    if (SF.TERMINAL.includes(view.status) || streams.has(view.id) || streams.size >= MAX_STREAMS) return;
    const controller = new AbortController();
    streams.set(view.id, controller);
    SF.follow(view.id, (next) => {
      const tr = rows.get(next.id);
      if (tr) update(tr, next);
    }, controller.signal).catch(() => {}).finally(() => streams.delete(view.id));
  }

  function render(items) {
    const seen = new Set();
    const ordered = [];
    for (const view of items) {
      if (seen.has(view.id)) continue;
      seen.add(view.id);
      let tr = rows.get(view.id);
      if (tr) update(tr, view);
      else rows.set(view.id, (tr = row(view)));
      ordered.push(tr);
      stream(view);
    }
    for (const [id, tr] of rows) {
      if (!seen.has(id)) {
        rows.delete(id);
        tr.remove();
      }
    }
    body.replaceChildren(...ordered);
    empty.hidden = ordered.length > 0;
  }

  async function load() {
    const params = new URLSearchParams({ limit: "20" });
    if (status) params.set("status", status);
    const first = await SF.getJSON(`/v1/jobs?${params}`);
    if (!extraPages.length) cursor = first.next_cursor;
    render([first.items, ...extraPages].flat());
    more.hidden = !cursor;
  }

  async function loadMore() {
    if (!cursor) return;
    const params = new URLSearchParams({ limit: "20", cursor });
    if (status) params.set("status", status);
    const page = await SF.getJSON(`/v1/jobs?${params}`);
    extraPages.push(page.items);
    cursor = page.next_cursor;
    await load();
  }

  function setFilter(value) {
    status = value;
    extraPages = [];
    cursor = null;
    for (const controller of streams.values()) controller.abort();
    streams.clear();
    const url = new URL(location.href);
    if (value) url.searchParams.set("status", value);
    else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    for (const button of document.querySelectorAll("#filters button")) {
      button.setAttribute("aria-pressed", String(button.dataset.status === value));
    }
    refresh();
  }

  async function refresh() {
    try {
      await load();
      SF.showBanner("");
    } catch (err) {
      if (err.status !== 401) SF.showBanner(err.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const button of document.querySelectorAll("#filters button")) {
      button.addEventListener("click", () => setFilter(button.dataset.status));
    }
    more.addEventListener("click", () => loadMore().catch((err) => SF.showBanner(err.message)));
    setFilter(status);
    setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  });
})();
