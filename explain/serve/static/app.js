// The page of `explain serve`: submit an image, watch the job, see its pictures, list past jobs.
// Every server string is shown with textContent (never as HTML); pictures are fetched with the
// token and shown as blob URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("explain-token"), file: null, shown: null,
                poll: null, blobs: [], oldest: null };

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem("explain-token");
    state.token = null;
    $("token-box").hidden = false;
    throw new Error("a valid token is needed");
  }
  return response;
}

async function problem(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    }
    return body.detail || response.statusText;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

function option(select, value, text, disabled = false, title = "") {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  o.disabled = disabled;
  o.title = title;
  select.append(o);
}

function showFields() {
  const method = $("method").value;
  for (const label of document.querySelectorAll("label[data-for]")) {
    label.hidden = !label.dataset.for.split(" ").includes(method);
  }
}

async function start() {
  const health = await (await fetch("healthz")).json();
  if (health.auth && !state.token) {
    $("token-box").hidden = false;
    return;
  }
  $("token-box").hidden = true;
  const response = await api("v1/models");
  const info = await response.json();
  $("model").textContent = `model: ${info.model} (${info.classes.join(", ")}) on ${info.device}`;
  for (const m of info.methods) {
    option($("method"), m.name, m.title, !m.available, m.why_not || "");
  }
  for (const c of info.classes) option($("target"), c, c);
  $("target").value = info.classes.includes(info.defaults.target)
    ? info.defaults.target : info.classes[info.classes.length - 1];
  for (const f of info.fills) option($("fill"), f, f);
  showFields();
  $("go").disabled = false;
  const opened = openedJob();
  if (opened) await show(opened);
  await listJobs(true);
}

function pick(file) {
  state.file = file || null;
  $("file-name").textContent = file ? file.name : "";
}

async function submit(event) {
  event.preventDefault();
  if (!state.file) {
    say("Choose an image first.", true);
    return;
  }
  const form = new FormData();
  form.append("image", state.file);
  const method = $("method").value;
  form.append("method", method);
  form.append("target", $("target").value);
  for (const label of document.querySelectorAll("label[data-for]")) {
    const input = label.querySelector("input, select");
    if (!label.hidden) form.append(input.id, input.type === "checkbox" ? input.checked : input.value);
  }
  say("Uploading…");
  const response = await api("v1/visualizations", { method: "POST", body: form });
  if (response.status !== 202) {
    say(`Refused (${response.status}): ${await problem(response)}`, true);
    return;
  }
  const accepted = await response.json();
  say("Queued.");
  await show(accepted.status_url);
  await listJobs(true);
}

function clearPictures() {
  for (const url of state.blobs) URL.revokeObjectURL(url);
  state.blobs = [];
  for (const id of ["original", "overlay", "side"]) $(id).removeAttribute("src");
  for (const id of ["downloads", "reading", "share", "score"]) $(id).textContent = "";
}

function share(id) {
  // jobs/ID is relative to the page's base: the service's root, from / and from /jobs/ID
  const link = document.createElement("a");
  link.href = `jobs/${encodeURIComponent(id)}`;
  link.textContent = link.href;
  $("share").textContent = "Link to this result: ";
  $("share").append(link);
}

function openedJob() {
  const found = /\/jobs\/([0-9a-f-]+)$/.exec(location.pathname);
  return found ? `v1/visualizations/${found[1]}` : null;
}

async function picture(id, url) {
  const response = await api(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const blob = URL.createObjectURL(await response.blob());
  state.blobs.push(blob);
  $(id).src = blob;
}

async function download(url, name) {
  const response = await api(url);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  state.blobs.push(link.href);
  link.download = name;
  link.click();
}

async function show(statusUrl) {
  clearTimeout(state.poll);
  state.shown = statusUrl;
  clearPictures();
  $("job").hidden = false;
  await refresh(statusUrl);
}

async function refresh(statusUrl) {
  if (state.shown !== statusUrl) return;
  const response = await api(statusUrl);
  if (!response.ok) {
    say(`That job is gone (${response.status}).`, true);
    $("job").hidden = true;
    return;
  }
  const job = await response.json();
  $("job-title").textContent = `${job.method} · ${job.status} · ${job.id}`;
  const { done, total } = job.progress;
  $("progress").max = Math.max(total, 1);
  $("progress").value = job.status === "done" ? $("progress").max : done;
  $("progress-text").textContent = total ? `${done} / ${total}` : job.status;
  if (job.status === "queued" || job.status === "running") {
    state.poll = setTimeout(() => refresh(statusUrl).catch((e) => say(e.message, true)), 500);
    return;
  }
  if (job.status === "failed") {
    $("score").textContent = `Failed: ${job.error}`;
    $("score").className = "failed";
    await listJobs(true);
    return;
  }
  $("score").className = "";
  $("score").textContent = `p(${job.options.target}) of the image: ${job.score === null
    ? "—" : job.score.toFixed(4)}`;
  share(job.id);
  say("Done.");
  const meta = await (await api(job.results["heatmap.json"])).json();
  if (state.shown !== statusUrl) return;
  // the words come from the map (its unit, sign and drawn scale), never a fixed sentence
  $("reading").textContent = meta.reading || `Colour = ${meta.unit}.`;
  await Promise.all(["original", "overlay", "side"].map(
    (name) => picture(name, job.results[`${name}.png`])));
  for (const name of ["heatmap.npy", "heatmap.json"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `download ${name}`;
    button.addEventListener("click", () => download(job.results[name], name));
    $("downloads").append(button, " ");
  }
  await listJobs(true);
}

function cell(row, text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

async function listJobs(fresh) {
  const query = fresh || !state.oldest ? "" : `&before=${encodeURIComponent(state.oldest)}`;
  const response = await api(`v1/visualizations?limit=20${query}`);
  if (!response.ok) return;
  const page = await response.json();
  if (fresh) $("jobs").textContent = "";
  for (const job of page.items) {
    const row = document.createElement("tr");
    const statusUrl = `v1/visualizations/${job.id}`;
    cell(row, job.created.replace("T", " ").slice(0, 19));
    cell(row, job.method);
    cell(row, job.status, job.status === "failed" ? "failed" : "");
    cell(row, job.score === null ? "" : job.score.toFixed(4));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "delete";
    remove.addEventListener("click", async (event) => {
      event.stopPropagation();
      await api(statusUrl, { method: "DELETE" });
      if (state.shown === statusUrl) $("job").hidden = true;
      await listJobs(true);
    });
    cell(row, "").append(remove);
    row.addEventListener("click", () => show(statusUrl).catch((e) => say(e.message, true)));
    $("jobs").append(row);
    state.oldest = job.id;
  }
  $("more").hidden = !page.next;
}

function wire() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("explain-token", state.token);
    start().catch((e) => say(e.message, true));
  });
  $("job-form").addEventListener("submit", (e) => submit(e).catch((x) => say(x.message, true)));
  $("file").addEventListener("change", () => pick($("file").files[0]));
  $("method").addEventListener("change", showFields);
  $("more").addEventListener("click", () => listJobs(false));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pick(event.dataTransfer.files[0]);
  });
}

wire();
start().catch((e) => say(e.message, true));
