// Shared by every page: the API key (session storage), API calls with the key, job progress streams, helpers.
"use strict";

const SF = (() => {
  const KEY_NAME = "slimformer.apiKey";
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  const apiKey = () => sessionStorage.getItem(KEY_NAME) || "";

  class ApiError extends Error {
    constructor(status, body, fallback) {
      const error = (body && body.error) || {};
      super(error.message || fallback || `the server answered ${status}`);
      this.status = status;
      this.code = error.code || null;
      this.details = error.details || {};
    }
  }

  function withKey(headers) {
    const h = new Headers(headers || {});
    const key = apiKey();
    if (key) h.set("Authorization", `Bearer ${key}`);
    return h;
  }

  // Every request to the API goes through here, so the key travels with each one (images and downloads too).
  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: withKey(options.headers), cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, null, "cannot reach the server; is it running?");
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      const err = new ApiError(response.status, body, `${response.status} ${response.statusText}`);
      if (response.status === 401) needKey(err.message);
      throw err;
    }
    return response;
  }

  const getJSON = async (path, options) => (await api(path, options)).json();

  // The job spec's facts from the API (GET /v1/spec/facts): the stage table, the upload formats, every field's
  // choices, range and default. The pages keep no copy of them; fetched once per page.
  let factsPromise = null;
  function facts() {
    factsPromise ??= getJSON("/v1/spec/facts").catch((err) => {
      factsPromise = null;
      throw err;
    });
    return factsPromise;
  }

  async function blobURL(path) {
    const response = await api(path);
    return URL.createObjectURL(await response.blob());
  }

  // A download the browser saves, fetched with the key: the bytes become a blob URL behind a temporary link.
  async function saveAs(path, filename) {
    const url = await blobURL(path);
    const link = el("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Follows a job's server-sent events with fetch (EventSource cannot send the Authorization header). When the
  // stream cannot start or drops before the end, polls instead. Resolves with the last view.
  async function follow(jobId, onView, signal) {
    let last = null;
    const id = encodeURIComponent(jobId);
    try {
      const response = await api(`/v1/jobs/${id}/events`, { signal, headers: { Accept: "text/event-stream" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue;
          if (event === "progress") {
            last = JSON.parse(data.join("\n"));
            onView(last);
          } else if (event === "end" && last && TERMINAL.includes(last.status)) {
            reader.cancel().catch(() => {});
            return last;
          }
        }
      }
    } catch (err) {
      if (signal && signal.aborted) return last;
      if (err instanceof ApiError && err.status && err.status < 500 && err.status !== 429) throw err;
    }
    while (!(signal && signal.aborted)) {
      const view = await getJSON(`/v1/jobs/${id}`, { signal });
      onView(view);
      last = view;
      if (TERMINAL.includes(view.status)) return view;
      await sleep(1500);
    }
    return last;
  }

  // el("a", {href: "/x", class: "y"}, "text", child): the only way the pages build HTML from data (no innerHTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  const percent = (fraction) => `${Math.round(100 * (fraction || 0))}%`;

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function badge(status) {
    return el("span", { class: `badge ${status}`, text: status });
  }

  function setBadge(node, status) {
    node.className = `badge ${status}`;
    node.textContent = status;
  }

  // A progress bar element: its fill width and label follow the job view.
  function setProgress(bar, view) {
    const value = view.status === "succeeded" ? 1 : view.progress || 0;
    bar.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", String(Math.round(100 * value)));
    bar.dataset.status = view.status;
  }

  function progressText(view) {
    if (view.status === "queued") return view.message || "waiting for a worker";
    const parts = [view.stage || view.status, percent(view.status === "succeeded" ? 1 : view.progress)];
    if (view.status === "running" && view.eta_seconds !== null && view.eta_seconds !== undefined) {
      parts.push(`ETA ${duration(view.eta_seconds)}`);
    }
    return parts.join(" · ");
  }

  function progressBar() {
    return el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" },
      el("div", { class: "fill" }));
  }

  function showBanner(message, kind = "error") {
    const banner = document.getElementById("banner");
    banner.textContent = message;
    banner.className = `banner ${kind}`;
    banner.hidden = !message;
  }

  function needKey(message) {
    showBanner(`${message}. Enter an API key above (ask the server's admin: slimformer keys create).`);
    document.getElementById("key-input").focus();
  }

  function setupKeyForm() {
    const form = document.getElementById("key-form");
    const state = document.getElementById("key-state");
    const input = document.getElementById("key-input");
    const forget = document.getElementById("key-forget");
    const key = apiKey();
    state.textContent = key ? `key …${key.slice(-4)}` : "no key";
    forget.hidden = !key;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY_NAME, value);
      input.value = "";
      location.reload();
    });
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", setupKeyForm);

  return {
    TERMINAL, ApiError, api, getJSON, facts, blobURL, saveAs, follow, el, duration, percent, when, badge, setBadge,
    setProgress, progressText, progressBar, showBanner, sleep,
  };
})();
