// The submit form: builds a job spec from the fields, uploads data files, shows the API's messages by the fields.
"use strict";

(() => {
  const { el } = SF;
  const form = document.getElementById("submit-form");
  const formError = document.getElementById("form-error");
  const state = document.getElementById("submit-state");
  const uploads = new Map(); // <input type=file> -> {file, upload}: a resubmit does not upload the same file again
  const METHOD_LABELS = { prune: "Prune", distill: "Distil", prune_distill: "Prune, then distil" };
  let idempotencyKey = null;
  let stages = []; // the stage table (GET /v1/spec/facts): which methods prune, which distil

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  const value = (name) => form.querySelector(`input[name="${name}"]:checked`)?.value;

  function setPath(target, path, v) {
    const keys = path.split(".");
    let node = target;
    for (const key of keys.slice(0, -1)) node = node[key] ??= {};
    node[keys.at(-1)] = v;
  }

  const runs = (stage, method) => stages.some((s) => s.name === stage && s.methods.includes(method));

  function syncSections() {
    const method = value("method");
    if (method && stages.length) {
      document.getElementById("prune-section").hidden = !runs("pruning", method);
      document.getElementById("distill-section").hidden = !runs("distilling", method);
    }
    for (const id of ["student-layers-label", "student-id-label"]) {
      document.getElementById(id).hidden = method !== "distill";
    }
    const hub = value("source") === "hub";
    document.getElementById("source-hub").hidden = !hub;
    document.getElementById("source-upload").hidden = hub;
  }

  // The form from the spec's facts: each select's choices, the method's choices, the number fields' ranges, the
  // files the upload accepts, each field's description as its tooltip.
  function applyFacts(facts) {
    stages = facts.stages;
    const fields = facts.fields;
    for (const select of form.querySelectorAll("select[data-choices]")) {
      const field = fields[select.name];
      if (!field) continue;
      for (const choice of field.choices || []) {
        select.append(el("option", { value: choice, text: choice, selected: choice === field.default }));
      }
    }
    const method = fields.method;
    document.getElementById("method-choices").replaceChildren(...method.choices.map((choice) =>
      el("label", { class: "inline" },
        el("input", { type: "radio", name: "method", value: choice, checked: choice === method.default,
          onchange: syncSections }),
        ` ${METHOD_LABELS[choice] || choice}`)));
    for (const input of form.querySelectorAll("input[type=number]")) {
      const field = fields[input.name];
      if (!field) continue;
      const low = field.ge ?? field.gt;
      const high = field.le ?? field.lt;
      if (low !== null && low !== undefined) input.min = String(low);
      if (high !== null && high !== undefined) input.max = String(high);
    }
    for (const control of form.querySelectorAll("[name]")) {
      const field = fields[control.name];
      if (field && field.description) control.title = field.description;
    }
    const suffixes = facts.upload_formats.map((f) => f.suffix);
    for (const input of form.querySelectorAll("input[data-upload]")) input.accept = suffixes.join(",");
    for (const span of form.querySelectorAll(".upload-formats")) span.textContent = `(${suffixes.join(", ")})`;
    syncSections();
  }

  // The spec: only what the person filled in (the API fills in the defaults), in the sections shown (those that
  // apply to the method and the data source).
  function buildSpec() {
    const method = value("method");
    const spec = method ? { method } : {};
    for (const input of form.querySelectorAll("input[name*='.'], select[name*='.']")) {
      const name = input.name;
      if (input.closest("[hidden]")) continue;
      if (input.type === "checkbox") {
        if (!name.startsWith("publish.")) setPath(spec, name, input.checked);
        continue;
      }
      const raw = input.value.trim();
      if (raw === "") continue;
      setPath(spec, name, input.type === "number" ? Number(raw) : raw);
    }
    if (spec.publish && spec.publish.repo_id) {
      spec.publish.private = form.querySelector("input[name='publish.private']").checked;
    }
    const token = form.querySelector("input[name='hub_token']").value.trim();
    if (token) spec.hub_token = token;
    return spec;
  }

  function clearErrors() {
    formError.hidden = true;
    formError.replaceChildren();
    for (const node of form.querySelectorAll(".field-error")) node.remove();
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  // The control (or the fieldset) a dotted API field path belongs to: "prune.heads", "dataset", ...
  function target(field) {
    let path = field || "";
    while (path) {
      const node = form.querySelector(`[name="${CSS.escape(path)}"]`)
        || form.querySelector(`[data-field="${CSS.escape(path)}"]`);
      if (node && !node.closest("[hidden]")) return node;
      path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
    }
    return null;
  }

  function showErrors(err) {
    const fields = (err.details && err.details.fields) || [];
    const general = [];
    for (const item of fields) {
      const node = target(item.field);
      const text = item.message || "invalid";
      if (!node) {
        general.push(item.field ? `${item.field}: ${text}` : text);
        continue;
      }
      const message = el("p", { class: "field-error", "data-for": item.field || "", text });
      if (node.tagName === "FIELDSET") node.querySelector("legend").after(message);
      else {
        node.setAttribute("aria-invalid", "true");
        const label = node.closest("label");
        if (label) label.append(message);
        else node.after(message);
      }
    }
    formError.append(el("strong", { text: err.message }));
    if (general.length) formError.append(el("ul", {}, general.map((g) => el("li", { text: g }))));
    formError.hidden = false;
    const first = form.querySelector(".field-error") || formError;
    first.scrollIntoView({ block: "center" });
  }

  async function uploadFile(input, field) {
    const file = input.files[0];
    if (!file) return null;
    const cached = uploads.get(input);
    if (cached && cached.file === file) return cached.upload;
    state.textContent = `uploading ${file.name}…`;
    const data = new FormData();
    data.append("file", file, file.name);
    try {
      const upload = await SF.getJSON("/v1/datasets", { method: "POST", body: data });
      uploads.set(input, { file, upload });
      const columns = document.getElementById("columns");
      columns.replaceChildren(...upload.columns.map((c) => el("option", { value: c })));
      document.getElementById("upload-info").textContent =
        `${upload.filename}: ${upload.rows} rows; columns ${upload.columns.join(", ")}`;
      return upload;
    } catch (err) {
      if (err instanceof SF.ApiError && !(err.details.fields || []).length) {
        err.details = { ...err.details, fields: [{ field, message: err.message }] };
      } else if (err instanceof SF.ApiError) {
        err.details.fields = err.details.fields.map((f) => ({ ...f, field, message: f.message || err.message }));
      }
      throw err;
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    const button = document.getElementById("submit-button");
    button.disabled = true;
    try {
      const spec = buildSpec();
      if (value("source") === "upload") {
        const train = await uploadFile(document.getElementById("train-file"), "dataset.upload_id");
        if (!train) {
          throw new SF.ApiError(422, { error: { message: "choose a training file, or pick a Hub dataset",
            details: { fields: [{ field: "dataset.upload_id", message: "choose a file" }] } } });
        }
        setPath(spec, "dataset.upload_id", train.upload_id);
        const evalUpload = await uploadFile(document.getElementById("eval-file"), "dataset.eval_upload_id");
        if (evalUpload) setPath(spec, "dataset.eval_upload_id", evalUpload.upload_id);
      }
      state.textContent = "submitting…";
      idempotencyKey ??= uuid();
      const view = await SF.getJSON("/v1/jobs", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
        body: JSON.stringify(spec),
      });
      state.textContent = `submitted ${view.id}`;
      location.assign(`/jobs/${encodeURIComponent(view.id)}`);
    } catch (err) {
      state.textContent = "";
      if (err instanceof SF.ApiError) {
        if (err.status !== 401) showErrors(err);
      } else {
        showErrors({ message: String(err), details: {} });
      }
      // Refused (4xx): no job was made, and the corrected form is a new request with a new key. Unanswered
      // (network, 5xx): keep the key, so submitting again cannot make a second job.
      if (err.status >= 400 && err.status < 500) idempotencyKey = null;
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const input of form.querySelectorAll("input[name='source']")) {
      input.addEventListener("change", syncSections);
    }
    form.addEventListener("submit", submit);
    syncSections();
    SF.facts().then(applyFacts).catch((err) => {
      if (err.status !== 401) SF.showBanner(`could not load the form's choices: ${err.message}`);
    });
  });
})();
