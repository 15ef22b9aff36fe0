// One job: live progress, stage timeline, side-by-side metrics, plots, evaluation card, downloads, cancel.
"use strict";

(() => {
  const { el } = SF;
  const root = document.getElementById("job");
  const jobId = root.dataset.jobId;
  const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let resultsShown = false;
  let current = null;

  let stageInfo = {}; // name -> the stage table's row (GET /v1/spec/facts), for what each stage does

  function renderTimeline(view) {
    const seconds = view.stage_seconds || {};
    const names = [...(view.stages || [])];
    for (const name of Object.keys(seconds)) if (!names.includes(name)) names.push(name);
    const total = Object.values(seconds).reduce((a, b) => a + b, 0) || 1;
    const running = view.status === "running" ? view.stage : null;
    const items = names.map((name) => {
      let state = "pending";
      let text = "";
      if (name in seconds) {
        state = "done";
        text = SF.duration(seconds[name]) || "<1s";
      }
      if (name === running) {
        state = "current";
        text = "in progress";
      }
      const span = el("span", { class: "span" });
      span.style.width = name in seconds ? `${Math.max(2, (100 * seconds[name]) / total).toFixed(1)}%` : "0";
      return el("li", { class: state, "data-stage": name, title: (stageInfo[name] || {}).does },
        el("span", { class: "name", text: name.replace("_", " ") }), el("span", { class: "track" }, span),
        el("span", { class: "time muted", text }));
    });
    document.getElementById("timeline").replaceChildren(...items);
  }

  function render(view) {
    current = view;
    const spec = view.spec || {};
    SF.setBadge(document.getElementById("status"), view.status);
    const summary = [(spec.model || {}).id, spec.method, `created ${SF.when(view.created_at)}`];
    if (view.finished_at) summary.push(`finished ${SF.when(view.finished_at)}`);
    if (view.attempts > 1) summary.push(`attempt ${view.attempts} of ${view.max_attempts}`);
    document.getElementById("summary").textContent = summary.filter(Boolean).join(" · ");
    SF.setProgress(document.getElementById("progress"), view);
    const label = [SF.progressText(view)];
    if (view.message && view.status === "running") label.push(view.message);
    document.getElementById("progress-label").textContent = label.join(" — ");
    document.getElementById("cancel").hidden = SF.TERMINAL.includes(view.status);
    document.getElementById("download-tar").hidden = view.status !== "succeeded";
    const error = document.getElementById("job-error");
    if (view.error && view.status === "failed") {
      error.replaceChildren(el("strong", { text: "The job failed: " }), view.error.message,
        el("span", { class: "muted", text: ` (${view.error.code})` }));
      error.hidden = false;
    } else if (view.error && view.status === "queued") {
      error.replaceChildren(el("strong", { text: "Retrying: " }), view.error.message);
      error.hidden = false;
    } else {
      error.hidden = true;
    }
    document.getElementById("spec").textContent = JSON.stringify(spec, null, 2);
    renderTimeline(view);
    if (view.status === "succeeded" && !resultsShown) {
      resultsShown = true;
      showResults(view).catch((err) => SF.showBanner(`could not load the results: ${err.message}`));
    }
  }

  const mb = (bytes) => (bytes === null || bytes === undefined ? "—" : `${(bytes / 1e6).toFixed(1)} MB`);

  async function showImage(files, name, imgId, figureId) {
    if (!files.some((f) => f.path === name)) return;
    const img = document.getElementById(imgId);
    img.src = await SF.blobURL(`${base}/artifacts/${encodeURIComponent(name)}`);
    document.getElementById(figureId).hidden = false;
  }

  // The card's HTML comes from the API (Markdown rendered without raw HTML). Parsed off-document first, so its
  // images do not load without the key; each is then fetched with the key and shown from a blob URL.
  async function showCard() {
    const html = await (await SF.api(`${base}/card?format=html`)).text();
    // the page's policy refuses inline styles (even in a parsed copy): table alignment becomes a class
    const doc = new DOMParser().parseFromString(
      html.replace(/ style="text-align:\s*(left|right|center);?"/g, ' class="align-$1"'), "text/html");
    const pending = [];
    for (const img of doc.querySelectorAll("img")) {
      const src = img.getAttribute("src") || "";
      img.removeAttribute("src");
      if (src.startsWith(`${base}/artifacts/`)) img.dataset.src = src;
    }
    for (const link of doc.querySelectorAll("a[href]")) {
      link.setAttribute("rel", "noopener noreferrer");
      link.setAttribute("target", "_blank");
    }
    foldDetails(doc);
    const card = document.getElementById("card");
    card.replaceChildren(...doc.body.childNodes);
    for (const img of card.querySelectorAll("img[data-src]")) {
      pending.push(SF.blobURL(img.dataset.src).then((url) => { img.src = url; }).catch(() => {}));
    }
    await Promise.all(pending);
  }

  // The API renders the card without raw HTML, so its "<details><summary>…</summary> … </details>" arrives as
  // text paragraphs: fold what lies between them into a real <details> element.
  function foldDetails(doc) {
    for (const start of [...doc.querySelectorAll("p")]) {
      const match = /^<details>\s*<summary>(.*)<\/summary>$/.exec(start.textContent.trim());
      if (!match) continue;
      const details = doc.createElement("details");
      const summary = doc.createElement("summary");
      summary.textContent = match[1];
      details.append(summary);
      let node = start.nextSibling;
      while (node && !(node.nodeName === "P" && node.textContent.trim() === "</details>")) {
        const next = node.nextSibling;
        details.append(node);
        node = next;
      }
      if (node) node.remove();
      start.replaceWith(details);
    }
  }

  async function showResults(view) {
    const { files } = await SF.getJSON(`${base}/artifacts`);
    document.getElementById("results").hidden = false;
    document.getElementById("files").replaceChildren(...files.map((f) => el("li", {},
      el("button", { type: "button", class: "link", "data-path": f.path,
        onclick: () => SF.saveAs(`${base}/artifacts/${f.path.split("/").map(encodeURIComponent).join("/")}`,
          f.path.split("/").at(-1)).catch((err) => SF.showBanner(err.message)) }, f.path),
      el("span", { class: "muted", text: ` ${f.size < 1e6 ? `${(f.size / 1e3).toFixed(1)} kB` : mb(f.size)}` }))));
    const work = [
      showImage(files, "head_importance.png", "heatmap", "heatmap-figure"),
      showImage(files, "pruning_curve.png", "curve", "curve-figure"),
      showCard().catch((err) => {
        document.getElementById("card").textContent = `no card: ${err.message}`;
      }),
    ];
    if (files.some((f) => f.path === "compression_report.json")) {
      const report = await SF.getJSON(`${base}/artifacts/compression_report.json`);
      const evaluation = report.evaluation;
      document.getElementById("metrics-note").textContent =
        `${evaluation.task}, ${evaluation.rows} evaluation rows on ${evaluation.device}`
        + ` (${evaluation.threads} threads); primary metric: ${evaluation.primary_metric}.`;
      showGenerations(evaluation.generations);
    }
    // the evaluation card's table, formatted by the API as the card formats it
    document.querySelector("#metrics tbody").replaceChildren(...(view.table || []).map((row) =>
      el("tr", { class: row.primary ? "primary-metric" : null }, el("th", { text: row.name }),
        el("td", { text: row.original }), el("td", { text: row.compressed }), el("td", { text: row.change }))));
    await Promise.all(work);
  }

  // a causal LM's greedy continuations, both models side by side (report.evaluation.generations)
  function showGenerations(generations) {
    if (!generations || !generations.items.length) return;
    document.getElementById("generations").hidden = false;
    document.getElementById("generations-note").textContent =
      `Greedy, at most ${generations.new_tokens} new tokens; "same" counts the leading tokens the`
      + " compressed model shares with the original.";
    document.querySelector("#generations tbody").replaceChildren(...generations.items.map((g) =>
      el("tr", {}, el("td", { text: g.prompt }), el("td", { text: g.original }),
        el("td", { text: `${g.compressed} (same: ${g.same_leading_tokens} of ${g.original_tokens})` }))));
  }

  async function cancel() {
    const button = document.getElementById("cancel");
    button.disabled = true;
    try {
      render(await SF.getJSON(`${base}/cancel`, { method: "POST" }));
    } catch (err) {
      SF.showBanner(err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    SF.facts().then((facts) => {
      stageInfo = Object.fromEntries(facts.stages.map((stage) => [stage.name, stage]));
      if (current) renderTimeline(current);
    }).catch(() => {}); // the timeline works without it: the job view names its stages
    try {
      render(await SF.getJSON(base));
    } catch (err) {
      if (err.status !== 401) SF.showBanner(err.message);
      document.getElementById("status").textContent = "unknown";
      for (const node of root.querySelectorAll("section:not(.job-head), details.spec, #progress")) node.hidden = true;
      return;
    }
    if (!SF.TERMINAL.includes(current.status)) {
      try {
        await SF.follow(jobId, render);
      } catch (err) {
        SF.showBanner(err.message);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("cancel").addEventListener("click", cancel);
    document.getElementById("download-tar").addEventListener("click", () => {
      SF.saveAs(`${base}/download`, `${jobId}.tar.gz`).catch((err) => SF.showBanner(err.message));
    });
    start();
  });
})();
