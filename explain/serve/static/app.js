// The page of `explain serve`: submit an image, watch the job, see its pictures, list past jobs;
// make a collection from many files or a folder, run a grid or an audit over it, open its results.
// Every server string is shown with textContent (never as HTML); pictures are fetched with the
// token and shown as blob URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("explain-token"), file: null, shown: null,
                poll: null, blobs: [], oldest: null, auth: false, picked: [], pickedName: "" };
const BATCH_FILES = 100;  // files per request adding images to a collection
const BATCH_BYTES = 50e6;  // and bytes (the server's --max-batch-mb is 200 by default)

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

function field(o, methods) {
  // one method option's form field, as the registry declares it (GET v1/models: options)
  const label = document.createElement("label");
  label.dataset.for = methods.filter((m) => m.options.includes(o.name)).map((m) => m.name).join(" ");
  label.title = o.help;
  let input;
  if (o.choices.length) {
    input = document.createElement("select");
    for (const c of o.choices) option(input, c, c);
  } else {
    input = document.createElement("input");
    if (o.type === "bool") input.type = "checkbox";
    else if (o.type === "int" || o.type === "float") {
      input.type = "number";
      if (o.low !== null) input.min = o.low;
      if (o.high !== null) input.max = o.high;
      if (o.type === "float") input.step = "any";
    } else input.size = 8;
  }
  input.id = o.name;
  if (o.type === "bool") input.checked = o.default;
  else input.value = o.default;
  label.append(`${o.title} `, input);
  return label;
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
  state.auth = health.auth;
  const response = await api("v1/models");
  const info = await response.json();
  $("model").textContent = `model: ${info.model} (${info.classes.join(", ")}) on ${info.device}`;
  for (const m of info.methods) {
    option($("method"), m.name, m.title, !m.available, m.why_not || "");
  }
  for (const c of info.classes) option($("target"), c, c);
  $("target").value = info.classes.includes(info.defaults.target)
    ? info.defaults.target : info.classes[info.classes.length - 1];
  for (const o of info.options) $("go").before(field(o, info.methods));
  showFields();
  $("go").disabled = false;
  $("make").disabled = false;
  const opened = openedJob();
  if (opened) await show(opened);
  await listJobs(true);
  await listCollections();
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
  for (const id of ["original", "overlay", "side", "mosaic"]) $(id).removeAttribute("src");
  for (const id of ["downloads", "reading", "share", "score", "open"]) $(id).textContent = "";
}

function pictures(single) {
  // the three pictures of a one-image job, or the mosaic of a grid (nothing for an audit)
  document.querySelector("#job .panels").hidden = !single;
  $("side-figure").hidden = !single;
  $("mosaic-figure").hidden = true;
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
  const { done, total, stage } = job.progress;
  $("progress").max = Math.max(total, 1);
  $("progress").value = job.status === "done" ? $("progress").max : done;
  $("progress-text").textContent = (total ? `${done} / ${total}` : job.status)
    + (stage && job.status === "running" ? ` · ${stage}` : "");
  const single = job.method !== "grid" && job.method !== "audit";
  pictures(single);
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
  if (!single) {
    await showCollectionJob(job, statusUrl);
    await listJobs(true);
    return;
  }
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

async function showCollectionJob(job, statusUrl) {
  // a grid's mosaic and its viewer, an audit's page; every result file can be downloaded
  $("score").textContent = job.method === "grid"
    ? `Similarity grid of collection ${job.options.collection}`
    : `Audit of collection ${job.options.collection} at threshold ${job.options.threshold}`;
  share(job.id);
  say("Done.");
  if (job.method === "grid") {
    $("mosaic-figure").hidden = false;
    await picture("mosaic", job.results["grid.png"]);
  }
  if (state.shown !== statusUrl) return;
  const page = job.results[job.method === "grid" ? "grid.html" : "audit.html"];
  if (page && !state.auth) {
    const link = document.createElement("a");
    link.href = page;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = job.method === "grid" ? "Open the grid viewer (pan and zoom)"
      : "Open the audit page";
    $("open").append(link);
  } else if (page) {
    $("open").textContent = "This server needs a token, which a page opened on its own "
      + "cannot send: download the files below.";
  }
  for (const name of Object.keys(job.results)) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `download ${name}`;
    button.addEventListener("click", () => download(job.results[name], name));
    $("downloads").append(button, " ");
  }
}

async function folderFiles(entry, path, out) {
  // every file below a dropped folder, with its path inside it
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ file, path });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return;
    for (const child of batch) {
      await folderFiles(child, path ? `${path}/${child.name}` : child.name, out);
    }
  }
}

function pickMany(picked, name) {
  // hidden files (.DS_Store, ._x) are left out; any other file goes up and the server judges it
  state.picked = picked.filter((p) => !p.path.split("/").some((part) => part.startsWith(".")))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  state.pickedName = name;
  const labelled = state.picked.filter((p) => p.path.includes("/")).length;
  $("files-name").textContent = `${state.picked.length} files`
    + (labelled ? `, ${labelled} in sub-folders (labelled)` : "");
  if (!$("collection-name").value) $("collection-name").value = name;
}

function fromFolderInput(files) {
  // webkitRelativePath is "FOLDER/sub/x.jpg": the path inside the folder drops FOLDER
  const picked = [...files].map((file) => ({
    file, path: file.webkitRelativePath.split("/").slice(1).join("/") || file.name }));
  const root = files.length ? files[0].webkitRelativePath.split("/")[0] : "";
  pickMany(picked, root);
}

async function fromDrop(items) {
  const entries = [...items].map((item) => item.webkitGetAsEntry()).filter(Boolean);
  const out = [];
  const folders = entries.filter((e) => e.isDirectory);
  for (const entry of entries) {
    // one folder dropped: paths inside it; files or several folders: paths from here
    await folderFiles(entry, entries.length === 1 && entry.isDirectory ? "" : entry.name, out);
  }
  pickMany(out, folders.length === 1 && entries.length === 1 ? folders[0].name
    : `${out.length} images`);
}

function label(path) {
  // the first sub-folder names the label, as `explain grid` and `explain audit` read a folder
  const parts = path.split("/");
  return parts.length > 1 ? parts[0] : "";
}

async function makeCollection(event) {
  event.preventDefault();
  if (!state.picked.length) {
    tell("Drop or choose images, or a folder, first.", true);
    return;
  }
  const name = $("collection-name").value.trim() || state.pickedName || "images";
  const made = await api("v1/collections", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }) });
  if (made.status !== 201) {
    tell(`Refused (${made.status}): ${await problem(made)}`, true);
    return;
  }
  const { id } = await made.json();
  $("rejected").textContent = "";
  const labelled = state.picked.some((p) => label(p.path));
  let added = 0;
  let sent = 0;
  let batch = [];
  let bytes = 0;
  const send = async () => {
    const form = new FormData();
    for (const p of batch) form.append("image", p.file, p.path);
    if (labelled) for (const p of batch) form.append("label", label(p.path));
    const response = await api(`v1/collections/${id}/images`, { method: "POST", body: form });
    if (response.status !== 201) {
      for (const p of batch) rejectedLine(p.path, await problem(response));
    } else {
      const answer = await response.json();
      added += answer.added;
      for (const r of answer.rejected) rejectedLine(r.name, r.reason);
    }
    sent += batch.length;
    tell(`Uploading… ${sent} / ${state.picked.length}`);
    batch = [];
    bytes = 0;
  };
  for (const p of state.picked) {
    if (batch.length && (batch.length >= BATCH_FILES || bytes + p.file.size > BATCH_BYTES)) {
      await send();
    }
    batch.push(p);
    bytes += p.file.size;
  }
  if (batch.length) await send();
  const refused = state.picked.length - added;
  tell(`Collection "${name}": ${added} images added` + (refused ? `, ${refused} rejected` : "")
    + ".", refused > 0);
  await listCollections();
}

function rejectedLine(name, reason) {
  const li = document.createElement("li");
  li.textContent = `${name}: ${reason}`;
  $("rejected").append(li);
}

function tell(text, isError = false) {
  $("collection-message").textContent = text;
  $("collection-message").className = isError ? "error" : "";
}

async function runOver(collection, method) {
  const form = new FormData();
  form.append("method", method);
  form.append("collection", collection);
  form.append("target", $("target").value);
  const response = await api("v1/visualizations", { method: "POST", body: form });
  if (response.status !== 202) {
    tell(`Refused (${response.status}): ${await problem(response)}`, true);
    return;
  }
  tell(`${method === "grid" ? "Grid" : "Audit"} queued.`);
  await show((await response.json()).status_url);
  await listJobs(true);
}

async function listCollections() {
  const response = await api("v1/collections?limit=100");
  if (!response.ok) return;
  const page = await response.json();
  $("collection-list").textContent = "";
  for (const c of page.items) {
    const row = document.createElement("tr");
    cell(row, c.created.replace("T", " ").slice(0, 19));
    cell(row, c.name);
    cell(row, String(c.images));
    cell(row, String(c.labelled));
    const actions = cell(row, "");
    for (const [text, act] of [
      ["grid", () => runOver(c.id, "grid")],
      ["audit", () => runOver(c.id, "audit")],
      ["delete", async () => {
        await api(`v1/collections/${c.id}`, { method: "DELETE" });
        await listCollections();
      }]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = text;
      button.className = `do-${text}`;
      button.addEventListener("click", () => act().catch((e) => tell(e.message, true)));
      actions.append(button);
    }
    $("collection-list").append(row);
  }
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
  const many = $("drop-many");
  many.addEventListener("dragover", (event) => {
    event.preventDefault();
    many.classList.add("over");
  });
  many.addEventListener("dragleave", () => many.classList.remove("over"));
  many.addEventListener("drop", (event) => {
    event.preventDefault();
    many.classList.remove("over");
    fromDrop(event.dataTransfer.items).catch((e) => tell(e.message, true));
  });
  $("files").addEventListener("change", () => pickMany(
    [...$("files").files].map((file) => ({ file, path: file.name })),
    `${$("files").files.length} images`));
  $("folder").addEventListener("change", () => fromFolderInput($("folder").files));
  $("collection-form").addEventListener(
    "submit", (e) => makeCollection(e).catch((x) => tell(x.message, true)));
}

wire();
start().catch((e) => say(e.message, true));
