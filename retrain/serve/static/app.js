// The page `retrain serve` shows at /: hash routes over the /v1 API, no framework, no build step.
//
// Every piece of text that came from a user or the server (class, file, model and dataset
// names, errors, the log) goes into the page through textContent or a text node (el() below),
// never through innerHTML, so a class folder named <img src=x onerror=alert(1)> stays text.

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const TOKEN_KEY = "retrain.token";
const LIVE_STREAMS = 4; // event streams the jobs list keeps open at once (browsers allow 6 per host)
const PHASE_COLOURS = { 1: "#2563eb", 2: "#c2410c" };
const main = document.getElementById("main");
const enc = encodeURIComponent;

// --- building elements ------------------------------------------------------------------------

/** el("a", {href: "#/x", class: "c"}, "text", child, ...): a new element; strings become text nodes. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

/** node's children replaced by `children` (strings become text; null and false are left out). */
function put(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function heading(title, ...actions) {
  document.title = `${title} · retrain`;
  return el("div", { class: "heading" }, el("h1", { text: title }), ...actions);
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// --- errors -----------------------------------------------------------------------------------

const alertBox = document.getElementById("alert");
const alertText = document.getElementById("alert-text");
document.getElementById("alert-close").addEventListener("click", hideError);

function showError(message) {
  alertText.textContent = message;
  alertBox.hidden = false;
}

function hideError() {
  alertBox.hidden = true;
  alertText.textContent = "";
}

/** A failed request's message in the alert; a request cut short by leaving the page is no error. */
function report(err) {
  if (err?.name === "AbortError") return;
  showError(err instanceof ApiError ? err.message : `${err?.message ?? err}`);
}

// --- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let tokenAsked = null; // one token form, however many requests got a 401 at once

function askToken(refused) {
  if (tokenAsked) return tokenAsked;
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-why").textContent = refused
    ? "The server refused that token. Enter it again; it is kept in this tab only."
    : "Enter the token its operator gave you. It is kept in this tab only and sent with every request.";
  tokenAsked = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      form.hidden = true;
      tokenAsked = null;
      resolve();
    };
  });
  form.hidden = false;
  input.focus();
  return tokenAsked;
}

/** fetch(path) with the bearer token when one is stored; a 401 asks for the token and tries
 *  again; any other error status throws an ApiError carrying the server's {"error"} line. */
async function api(path, { method, json, body, headers = {}, signal } = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const sent = new Headers(headers);
    if (token) sent.set("Authorization", `Bearer ${token}`);
    let payload = body;
    if (json !== undefined) {
      payload = JSON.stringify(json);
      sent.set("Content-Type", "application/json");
    }
    const response = await fetch(path, {
      method: method ?? (payload === undefined ? "GET" : "POST"), headers: sent, body: payload, signal,
    });
    if (response.status === 401) {
      await askToken(Boolean(token));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await errorOf(response));
    return response;
  }
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const answer = JSON.parse(text);
    if (typeof answer?.error === "string") return answer.error;
  } catch { /* not JSON: say what came */ }
  return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

const getJSON = async (path, options) => (await api(path, options)).json();

/** Show an image the API serves: an <img src> cannot send the Authorization header, so the
 *  bytes come through api() and the image shows them from a blob URL. */
async function loadImage(img, path, view) {
  const blob = await (await api(path, { signal: view.signal })).blob();
  const url = URL.createObjectURL(blob);
  view.cleanups.push(() => URL.revokeObjectURL(url));
  img.src = url;
}

// --- server-sent events -----------------------------------------------------------------------

/** The events of one text/event-stream body: {id, event, data}. Parsed here because
 *  EventSource cannot send the Authorization header. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = "";
  let kind = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (let line of lines) {
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) yield { id, event: kind || "message", data: data.join("\n") };
          kind = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "event") kind = text;
        else if (field === "id") id = text;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Follow a job's events from its first one until it ends, calling onEvent(event) for each.
 *  A stream that drops before the job's final state is opened again with Last-Event-ID, so
 *  it goes on where it stopped. */
async function followJob(id, signal, onEvent) {
  let last = "";
  let wait = 500;
  while (!signal.aborted) {
    let ended = false;
    try {
      const headers = last ? { "Last-Event-ID": last } : {};
      const response = await api(`/v1/jobs/${enc(id)}/events`, { headers, signal });
      for await (const message of sseEvents(response.body)) {
        if (message.id) last = message.id;
        let event;
        try {
          event = JSON.parse(message.data);
        } catch {
          continue;
        }
        event.event ??= message.event;
        if (event.event === "state") ended = FINAL.has(event.state);
        onEvent(event);
        wait = 500;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) throw err;
    }
    if (ended || signal.aborted) return;
    // Ended without a final state: dropped, or closed between the state change and its event.
    try {
      const job = await getJSON(`/v1/jobs/${enc(id)}`, { signal });
      if (FINAL.has(job.state)) {
        onEvent({ event: "state", state: job.state, version: job.version, error: job.error });
        return;
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    await sleep(wait, signal);
    wait = Math.min(wait * 2, 10000);
  }
}

/** A job object (GET /v1/jobs/{id}'s shape) brought up to date by one event. */
function applyEvent(job, event) {
  switch (event.event) {
    case "progress":
      job.progress = {};
      for (const key of ["phase", "epoch", "epochs", "step", "steps", "loss", "val_accuracy", "eta_s"]) {
        job.progress[key] = event[key];
      }
      if (job.state === "queued") job.state = "running";
      break;
    case "state":
      job.state = event.state;
      if (event.version != null) job.version = event.version;
      if ("error" in event) job.error = event.error;
      if (event.state === "queued") {
        job.error = null;
        job.evaluating = false;
      }
      break;
    case "started":
      if (job.state === "queued") job.state = "running";
      job.evaluating = false;
      job.note = "";
      break;
    case "trained":
      job.evaluating = true;
      break;
    case "succeeded":
      job.version = event.version;
      job.metrics = event.metrics;
      break;
    case "failed":
      job.error = event.error;
      break;
    case "restarting":
      job.note = `its process ended (${event.reason ?? "unknown"}); starting it again, attempt ${event.attempt}`;
      break;
    default:
      break;
  }
}

// --- formatting -------------------------------------------------------------------------------

function percent(job) {
  if (job.state === "succeeded") return 100;
  const p = job.progress;
  if (!p || !p.epochs) return 0;
  const done = (p.epoch - 1) + (p.steps ? p.step / p.steps : 0);
  return Math.max(0, Math.min(100, (done / p.epochs) * 100));
}

function phaseText(job) {
  const p = job.progress;
  if (job.evaluating && !FINAL.has(job.state)) return "evaluating and publishing";
  if (job.state === "succeeded") return job.version == null ? "done" : `done: version ${job.version}`;
  if (!p) return job.state === "queued" ? "waiting to start" : "";
  const what = p.phase === 1 ? "new head" : "fine-tuning";
  return `${FINAL.has(job.state) ? "stopped in " : ""}phase ${p.phase} (${what}), epoch ${p.epoch} of ${p.epochs}`;
}

function etaText(job) {
  const p = job.progress;
  if (job.state !== "running" || job.evaluating || !p || p.eta_s == null) return "";
  return `${duration(p.eta_s)} (phase ${p.phase})`;
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function when(value) {
  if (value == null) return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `
    + `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const pct = (x) => (typeof x === "number" ? `${(x * 100).toFixed(1)}%` : "–");

function bytes(n) {
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function count(n) {
  if (n == null) return "";
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} k`;
  return String(n);
}

function stateBadge(node, state) {
  node.className = `state state-${state}`;
  node.textContent = state;
}

function progressBar(label) {
  const fill = el("span", { class: "fill" });
  const bar = el("div", {
    class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0,
    "aria-label": label,
  }, fill);
  const text = el("span", { class: "pct", text: "0%" });
  return {
    node: el("div", { class: "progress" }, bar, text),
    set(value) {
      const shown = value >= 100 ? 100 : Math.floor(value);
      fill.style.width = `${value}%`;
      bar.setAttribute("aria-valuenow", shown);
      text.textContent = `${shown}%`;
    },
  };
}

/** A drop zone that is a labelled <input type=file>: the input takes the keyboard focus, the
 *  label shows where to drop; onFiles(list of File) gets what was dropped or chosen. */
function dropZone(id, title, detail, { accept, multiple = false }, onFiles) {
  const input = el("input", { type: "file", id, class: "drop-input", accept, multiple });
  const zone = el("label", { for: id, class: "drop" }, el("strong", { text: title }), el("span", { text: detail }));
  input.addEventListener("change", () => {
    if (input.files.length) onFiles([...input.files]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer?.files.length) onFiles([...event.dataTransfer.files]);
  });
  return el("div", { class: "dropwrap" }, input, zone);
}

function field(id, label, input, hint) {
  input.id = id;
  const note = hint === undefined ? null : el("p", { class: "hint", id: `${id}-hint` }, hint);
  if (note) input.setAttribute("aria-describedby", note.id);
  return { node: el("div", { class: "field" }, el("label", { for: id, text: label }), input, note), input, hint: note };
}

function definitionList(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

// --- views ------------------------------------------------------------------------------------

let view = null; // the page shown: its abort signal ends its requests, streams and timers

function newView() {
  if (view) {
    view.controller.abort();
    for (const cleanup of view.cleanups) cleanup();
  }
  const controller = new AbortController();
  view = { controller, signal: controller.signal, cleanups: [] };
  return view;
}

/** Call fn every `ms` until the view ends; an error is shown once, the polling goes on. */
async function poll(current, ms, fn) {
  while (!current.signal.aborted) {
    await sleep(ms, current.signal);
    if (current.signal.aborted) return;
    try {
      await fn();
    } catch (err) {
      report(err);
    }
  }
}

// --- #/jobs -----------------------------------------------------------------------------------

async function showJobs(current) {
  const body = el("tbody");
  const empty = el("p", { class: "empty", hidden: true }, "No jobs yet. ", el("a", { href: "#/new" }, "Start one"), ".");
  const columns = ["Job", "Model", "State", "Progress", "Phase", "ETA", "Created"];
  main.append(
    heading("Jobs", el("a", { class: "button", href: "#/new" }, "New job")),
    el("div", { class: "table-wrap" }, el("table", { class: "jobs" },
      el("caption", { class: "sr-only", text: "Training jobs, newest first" }),
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", text: c })))), body)),
    empty,
  );
  const rows = new Map();
  const streaming = new Set();
  const refresh = async () => {
    const { jobs } = await getJSON("/v1/jobs", { signal: current.signal });
    empty.hidden = jobs.length > 0;
    for (const job of jobs) { // oldest first: each new row goes on top
      let row = rows.get(job.id);
      if (!row) {
        row = jobRow(job);
        rows.set(job.id, row);
        body.prepend(row.tr);
      }
      if (streaming.has(job.id)) continue; // its stream is newer than this list
      row.update(job);
      if (!FINAL.has(job.state) && streaming.size < LIVE_STREAMS) {
        streaming.add(job.id);
        const live = { ...job };
        followJob(job.id, current.signal, (event) => { applyEvent(live, event); row.update(live); })
          .catch(report).finally(() => streaming.delete(job.id));
      }
    }
  };
  await refresh();
  poll(current, 5000, refresh);
}

function jobRow(job) {
  const state = el("span");
  const bar = progressBar(`job ${job.id} progress`);
  // data-label: a narrow screen shows each row as a card, each value after its column's name
  const phase = el("td", { class: "phase", "data-label": "Phase" });
  const eta = el("td", { class: "eta", "data-label": "ETA" });
  const tr = el("tr", { dataset: { job: job.id } },
    el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${enc(job.id)}`, text: job.id })),
    el("td", { "data-label": "Model", text: job.model }), el("td", { "data-label": "State" }, state),
    el("td", { "data-label": "Progress" }, bar.node), phase, eta,
    el("td", { "data-label": "Created", text: when(job.created) }));
  return {
    tr,
    update(j) {
      stateBadge(state, j.state);
      bar.set(percent(j));
      phase.textContent = phaseText(j);
      eta.textContent = etaText(j);
    },
  };
}

// --- #/jobs/<id> ------------------------------------------------------------------------------

async function showJob(current, id) {
  const job = await getJSON(`/v1/jobs/${enc(id)}`, { signal: current.signal });
  const state = el("span");
  const bar = progressBar("training progress");
  const phase = el("span", { class: "phase" });
  const eta = el("span", { class: "eta" });
  const note = el("p", { class: "note", hidden: true });
  const failure = el("p", { class: "alert inline", role: "alert", hidden: true });
  const done = el("p", { class: "done", hidden: true });
  const cancel = el("button", { type: "button", id: "cancel", text: "Cancel" });
  const resume = el("button", { type: "button", id: "resume", text: "Resume" });
  const curves = new Curves();
  const log = el("pre", { class: "log", id: "log", tabindex: 0, "aria-label": "the job's log, last 40 lines" });
  const settings = el("div");
  let following = false;
  let logDone = false;

  main.append(
    heading(`Job ${id}`, el("a", { href: "#/jobs" }, "All jobs")),
    el("section", { class: "card status", "aria-label": "status" },
      el("p", { class: "line" }, "Model ", el("strong", { text: job.model }), " · ", state),
      bar.node, el("p", { class: "line" }, phase, " ", eta), note, failure, done,
      el("div", { class: "actions" }, cancel, resume)),
    el("section", { class: "card" }, el("h2", { text: "Curves" }), curves.node),
    el("section", { class: "card" }, el("h2", { text: "Log" }), log),
    el("section", { class: "card" }, el("h2", { text: "Settings" }), settings),
  );

  const render = () => {
    stateBadge(state, job.state);
    bar.set(percent(job));
    phase.textContent = job.state === "succeeded" ? "" : phaseText(job); // the line below says it
    eta.textContent = etaText(job) ? `· about ${duration(job.progress.eta_s)} left in phase ${job.progress.phase}` : "";
    note.textContent = job.note ?? "";
    note.hidden = !job.note || FINAL.has(job.state);
    failure.textContent = job.error ? `The job failed: ${job.error}` : "";
    failure.hidden = !(job.error && job.state === "failed");
    cancel.disabled = !["queued", "running"].includes(job.state);
    resume.disabled = !["cancelled", "failed"].includes(job.state);
    done.hidden = !(job.state === "succeeded" && job.version != null);
    if (!done.hidden && !done.firstChild) {
      const path = `${enc(job.model)}/${enc(job.version)}`;
      const accuracy = job.metrics?.accuracy;
      done.append(`Published as ${job.model} version ${job.version}`,
        accuracy == null ? "" : `, accuracy ${pct(accuracy)}`, ": ",
        el("a", { href: `#/models/${path}`, id: "open-model" }, "open the model"), " · ",
        el("a", { href: `#/try/${path}` }, "try it"));
    }
  };
  const follow = () => {
    if (following) return;
    following = true;
    curves.clear();
    followJob(id, current.signal, (event) => {
      applyEvent(job, event);
      if (event.event === "progress") curves.add(event);
      render();
    }).catch(report).finally(() => { following = false; });
  };
  const refreshLog = async () => {
    if (logDone) return;
    const finished = FINAL.has(job.state);
    const text = await (await api(`/v1/jobs/${enc(id)}/log?tail=40`, { signal: current.signal })).text();
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = text || "(nothing yet)";
    if (atEnd) log.scrollTop = log.scrollHeight;
    logDone = finished;
  };
  const act = async (verb) => {
    try {
      Object.assign(job, await getJSON(`/v1/jobs/${enc(id)}:${verb}`, { method: "POST", signal: current.signal }));
      logDone = false;
      render();
      if (!FINAL.has(job.state)) follow();
    } catch (err) {
      report(err);
    }
  };
  cancel.addEventListener("click", () => act("cancel"));
  resume.addEventListener("click", () => act("resume"));

  settings.append(definitionList(Object.entries(job.settings ?? {})
    .filter(([key]) => key !== "data")
    .map(([key, value]) => [key.replaceAll("_", " "), Array.isArray(value) ? value.join(", ") : String(value)])
    .concat([["dataset", job.dataset ?? ""], ["created", when(job.created)], ["attempts", String(job.attempts ?? "")]])));
  render();
  follow();
  await refreshLog().catch(report);
  poll(current, 3000, refreshLog);
  const resize = () => curves.draw();
  window.addEventListener("resize", resize);
  current.cleanups.push(() => window.removeEventListener("resize", resize));
}

/** The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `raw`: a tick step. */
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((f) => f * power).find((step) => step >= raw);
}

/** Training loss and validation accuracy per epoch, drawn on two canvases from the progress
 *  events that end an epoch (step == steps); phase 1 blue circles, phase 2 orange squares. */
class Curves {
  constructor() {
    this.points = new Map(); // epoch -> {phase, loss, accuracy}; a later event for an epoch wins
    this.epochs = 0;
    this.loss = el("canvas", { class: "chart", id: "loss-chart", role: "img", "aria-label": "training loss: no epoch yet" });
    this.accuracy = el("canvas", {
      class: "chart", id: "accuracy-chart", role: "img", "aria-label": "validation accuracy: no epoch yet",
    });
    const key = (phase, shape, text) => el("span", { class: "key" },
      el("span", { class: `mark ${shape}`, style: `background:${PHASE_COLOURS[phase]}` }), text);
    this.node = el("div", {},
      el("div", { class: "charts" },
        el("figure", {}, this.loss, el("figcaption", { text: "Training loss" })),
        el("figure", {}, this.accuracy, el("figcaption", { text: "Validation accuracy" }))),
      el("p", { class: "legend" }, key(1, "circle", "phase 1: the new head, backbone frozen"),
        key(2, "square", "phase 2: fine-tuning")));
    this.pending = false;
  }

  clear() {
    this.points.clear();
    this.schedule();
  }

  add(p) {
    this.epochs = Math.max(this.epochs, p.epochs ?? 0);
    if (p.step === p.steps) this.points.set(p.epoch, { phase: p.phase, loss: p.loss, accuracy: p.val_accuracy });
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    this.paint(this.loss, "loss", "loss", null, (v) => String(Number(v.toPrecision(3))));
    this.paint(this.accuracy, "accuracy", "accuracy", 1, (v) => `${Math.round(v * 100)}%`);
  }

  paint(canvas, key, axis, fixedMax, format) {
    const points = [...this.points].filter(([, p]) => Number.isFinite(p[key])).sort((a, b) => a[0] - b[0]);
    canvas.dataset.points = points.length;
    canvas.setAttribute("aria-label", points.length
      ? `${axis} by epoch: ${points.slice(-8).map(([e, p]) => `epoch ${e} ${format(p[key])}`).join(", ")}`
      : `${axis}: no epoch yet`);
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 320;
    const height = canvas.clientHeight || 220;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const styles = getComputedStyle(document.documentElement);
    const ink = styles.getPropertyValue("--muted").trim() || "#555";
    const grid = styles.getPropertyValue("--line").trim() || "#ddd";
    const pad = { left: 50, right: 12, top: 10, bottom: 38 };
    const w = width - pad.left - pad.right;
    const h = height - pad.top - pad.bottom;
    const highest = Math.max(1e-3, ...points.map(([, p]) => p[key]));
    const step = fixedMax ? fixedMax / 4 : niceStep(highest / 4);
    const top = fixedMax ?? step * Math.ceil(highest / step);
    const last = Math.max(this.epochs, 2, ...points.map(([e]) => e));
    const x = (epoch) => pad.left + ((epoch - 1) / (last - 1)) * w;
    const y = (v) => pad.top + h - (Math.max(0, v) / top) * h;
    g.font = "12px system-ui, sans-serif";
    g.lineWidth = 1;
    g.fillStyle = ink;
    g.strokeStyle = grid;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= Math.round(top / step); i += 1) {
      const v = step * i;
      g.beginPath();
      g.moveTo(pad.left, y(v));
      g.lineTo(pad.left + w, y(v));
      g.stroke();
      g.fillText(format(v), pad.left - 6, y(v));
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const every = Math.ceil(last / 10);
    for (let e = 1; e <= last; e += every) g.fillText(String(e), x(e), pad.top + h + 5);
    g.fillText("epoch", pad.left + w / 2, pad.top + h + 21);
    g.save();
    g.translate(12, pad.top + h / 2);
    g.rotate(-Math.PI / 2);
    g.textBaseline = "middle";
    g.fillText(axis, 0, 0);
    g.restore();
    for (const phase of [1, 2]) {
      const series = points.filter(([, p]) => p.phase === phase);
      g.strokeStyle = g.fillStyle = PHASE_COLOURS[phase];
      g.lineWidth = 2;
      g.beginPath();
      series.forEach(([e, p], i) => (i ? g.lineTo(x(e), y(p[key])) : g.moveTo(x(e), y(p[key]))));
      g.stroke();
      for (const [e, p] of series) {
        g.beginPath();
        if (phase === 1) g.arc(x(e), y(p[key]), 4, 0, 2 * Math.PI);
        else g.rect(x(e) - 4, y(p[key]) - 4, 8, 8);
        g.fill();
      }
    }
  }
}

// --- #/new ------------------------------------------------------------------------------------

async function showNew(current) {
  const { signal } = current;
  let chosen = null; // {id} of an uploaded dataset or {path} of a data-root folder, with name and report
  let backbones = [];
  let nameEdited = false;

  const status = el("p", { class: "status-line", "aria-live": "polite" });
  const reportBox = el("section", { class: "card report", id: "report", hidden: true, "aria-live": "polite" });
  const upload = async (files) => {
    const file = files[0];
    hideError();
    status.textContent = `Uploading ${file.name} (${bytes(file.size)}) and checking it…`;
    try {
      const name = file.name.replace(/\.(zip|tgz|tar(\.(gz|bz2|xz))?)$/i, "") || "dataset";
      const answer = await getJSON(`/v1/datasets?name=${enc(name)}`, {
        method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" }, signal,
      });
      status.textContent = "";
      choose({ id: answer.id, name: answer.name, report: answer });
    } catch (err) {
      status.textContent = "";
      report(err);
    }
  };

  const sources = el("div", { class: "sources" });
  main.append(
    heading("New job"),
    el("section", { class: "card" }, el("h2", { text: "1. Images" }),
      dropZone("archive", "Drop a .zip of class folders here",
        "or press to choose one (.zip or .tar.gz): a folder per class, or train/ and validation/ holding them",
        { accept: ".zip,.tar,.tgz,.gz,.bz2,.xz,application/zip,application/x-tar" }, upload),
      status, sources),
    reportBox,
  );

  // Another way in: a folder under the operator's --data-root, or an archive uploaded before.
  Promise.all([
    getJSON("/v1/data", { signal }).catch(() => ({ roots: [] })),
    getJSON("/v1/datasets", { signal }).catch(() => ({ datasets: [] })),
  ]).then(([data, uploaded]) => {
    const folders = data.roots.flatMap((r) => r.folders.map((f) => ({ path: `${r.root}/${f}`, folder: f, root: r.root })));
    if (folders.length) {
      const pick = el("select", {}, folders.map((f) => el("option", { value: f.path, text: `${f.folder}  (${f.root})` })));
      const check = el("button", { type: "button", class: "secondary", id: "check-folder", text: "Check this folder" });
      check.addEventListener("click", async () => {
        const folder = folders[pick.selectedIndex];
        hideError();
        status.textContent = `Checking ${folder.path}…`;
        try {
          const answer = await getJSON("/v1/data/check", { json: { data: folder.path }, signal });
          status.textContent = "";
          choose({ path: folder.path, name: folder.folder, report: answer });
        } catch (err) {
          status.textContent = "";
          report(err);
        }
      });
      sources.append(el("div", { class: "row" }, field("data-folder", "or a folder on the server", pick).node, check));
    }
    if (uploaded.datasets.length) {
      const list = [...uploaded.datasets].reverse();
      const pick = el("select", {}, list.map((d) => el("option", {
        value: d.id, text: `${d.name} · ${d.classes.length} classes · ${d.files} files · ${when(d.created)}`,
      })));
      const use = el("button", { type: "button", class: "secondary", id: "use-upload", text: "Use this upload" });
      use.addEventListener("click", () => {
        const d = list[pick.selectedIndex];
        choose({ id: d.id, name: d.name, report: d });
      });
      sources.append(el("div", { class: "row" }, field("earlier", "or an earlier upload", pick).node, use));
    }
  }).catch(report);

  // The training form.
  const f = {
    model: el("input", { type: "text", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}", value: "model",
      autocomplete: "off" }),
    backbone: el("select", {}, el("option", { value: "mobilenet_v2", text: "mobilenet_v2" })),
    alpha: el("select", {}),
    weights: el("select", {}, el("option", { value: "imagenet", text: "ImageNet (pretrained)" }),
      el("option", { value: "none", text: "none (train from scratch)" })),
    image_size: el("input", { type: "number", min: 8, max: 1024, step: 1, value: 96, required: true }),
    freeze: el("select", {}),
    epochs: el("input", { type: "number", min: 0, step: 1, value: 5, required: true }),
    fine_tune_epochs: el("input", { type: "number", min: 0, step: 1, value: 5, required: true }),
    time_budget: el("input", { type: "text", placeholder: "e.g. 15m", autocomplete: "off" }),
    batch_size: el("input", { type: "number", min: 1, step: 1, placeholder: "64" }),
    learning_rate: el("input", { type: "number", min: 0, step: "any", placeholder: "automatic" }),
    fine_tune_learning_rate: el("input", { type: "number", min: 0, step: "any", placeholder: "0.0002" }),
    extra: el("textarea", { rows: 3, spellcheck: "false", placeholder: '{"augment": ["flip"], "seed": 1}' }),
  };
  const fields = {
    model: field("f-model", "Model name", f.model, "the name it is published under: letters, digits, . _ -"),
    backbone: field("f-backbone", "Backbone", f.backbone, ""),
    alpha: field("f-alpha", "Width (alpha)", f.alpha, "narrower is faster and smaller"),
    weights: field("f-weights", "Starting weights", f.weights),
    image_size: field("f-image-size", "Image size (px)", f.image_size, ""),
    freeze: field("f-freeze", "Freeze", f.freeze, ""),
    epochs: field("f-epochs", "Epochs, phase 1 (new head)", f.epochs),
    fine_tune_epochs: field("f-fine-tune-epochs", "Epochs, phase 2 (fine-tuning)", f.fine_tune_epochs),
    time_budget: field("f-time-budget", "Time budget", f.time_budget,
      "optional: phase 2 runs as many epochs as fit in this time (90s, 30m, 1.5h)"),
    batch_size: field("f-batch-size", "Batch size", f.batch_size),
    learning_rate: field("f-learning-rate", "Learning rate, phase 1", f.learning_rate),
    fine_tune_learning_rate: field("f-fine-tune-learning-rate", "Learning rate, phase 2", f.fine_tune_learning_rate),
    extra: field("f-extra", "More settings (JSON)", f.extra, "any other `retrain fit` setting by its Python name"),
  };
  const train = el("button", { type: "submit", id: "train", text: "Train" });
  const trainNote = el("p", { class: "hint", id: "train-note", text: "Choose the images first." });
  const form = el("form", { class: "card", id: "job-form", novalidate: false },
    el("h2", { text: "2. Training" }),
    el("div", { class: "grid" }, ["model", "backbone", "alpha", "weights", "image_size", "freeze", "epochs",
      "fine_tune_epochs", "time_budget"].map((k) => fields[k].node)),
    el("details", {}, el("summary", { text: "Advanced settings" }),
      el("div", { class: "grid" }, ["batch_size", "learning_rate", "fine_tune_learning_rate"].map((k) => fields[k].node)),
      fields.extra.node),
    el("div", { class: "actions" }, train, trainNote));
  main.append(form);
  f.model.addEventListener("input", () => { nameEdited = true; });

  function choose(picked) {
    chosen = picked;
    renderReport(reportBox, picked.name, picked.report);
    if (!nameEdited) {
      f.model.value = picked.name.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "")
        .replace(/-+$/, "").slice(0, 64) || "model";
    }
    trainNote.textContent = `Images: ${picked.name} (${picked.report.classes.length} classes).`;
    explainFreeze();
  }

  const backbone = () => backbones.find((b) => b.name === f.backbone.value);
  const describeBackbone = (b) => {
    const parts = [b.name];
    if (b.params != null) parts.push(`${count(b.params)} params`);
    parts.push(b.images_per_s != null ? `${Math.round(b.images_per_s)} images/s` : "speed: measuring…");
    return parts.join(" · ");
  };
  let cpu = "";
  let measuring = false;
  const backboneHint = () => {
    const b = backbone();
    const figures = b?.params != null && b.images_per_s != null
      ? `${count(b.params)} parameters, ${Math.round(b.images_per_s)} images/s at ${b.native_size} px${cpu ? ` on ${cpu}` : ""}. `
      : "";
    fields.backbone.hint.textContent = `${figures}mobilenet_v2 at width 0.35 and 96 px is fast on a CPU`
      + (measuring ? " (measuring each backbone's size and speed on this server…)" : ".");
  };
  const showBackbones = (answer) => {
    const same = answer.backbones.map((b) => b.name).join() === backbones.map((b) => b.name).join();
    backbones = answer.backbones;
    cpu = answer.cpu ?? "";
    measuring = answer.measuring;
    if (same) { // new figures: the options keep their elements, and the selection stays as it is
      backbones.forEach((b, i) => { f.backbone.options[i].textContent = describeBackbone(b); });
    } else {
      f.backbone.replaceChildren(...backbones.map((b) => el("option", { value: b.name, text: describeBackbone(b) })));
    }
    backboneHint();
  };
  const backboneChanged = () => {
    const b = backbone();
    if (!b) return;
    const alphas = b.alphas ?? [];
    f.alpha.replaceChildren(...alphas.map((a) => el("option", { value: a, text: String(a) })));
    if (alphas.length) f.alpha.value = String(alphas.includes(0.35) && b.name === "mobilenet_v2" ? 0.35 : alphas.includes(1) ? 1 : alphas[0]);
    fields.alpha.node.hidden = !alphas.length;
    f.image_size.min = b.min_size;
    f.image_size.value = Math.max(b.min_size, Math.min(b.native_size, 96));
    fields.image_size.hint.textContent = `native ${b.native_size} px, at least ${b.min_size}; smaller is faster`;
    backboneHint();
    const points = b.freeze_points ?? [];
    f.freeze.replaceChildren(el("option", { value: "auto", text: "auto (chosen from the data)" }),
      el("option", { value: "all", text: "all: train the new head only" }),
      el("option", { value: "none", text: "none: fine-tune every layer" }),
      ...points.map((p) => el("option", { value: p, text: `fine-tune above ${p}` })));
    const scratch = b.imagenet === false || b.from_scratch === true; // no ImageNet weights to start from
    f.weights.options[0].disabled = scratch;
    f.weights.value = scratch ? "none" : "imagenet";
    explainFreeze();
  };
  let freezeAsked = 0;
  const explainFreeze = async () => {
    const hint = fields.freeze.hint;
    const value = f.freeze.value;
    const asked = ++freezeAsked;
    if (value === "all") hint.textContent = "Only the new head trains; the backbone stays as it is. Fastest.";
    else if (value === "none") hint.textContent = "Phase 2 fine-tunes the whole backbone: best with many images.";
    else if (value !== "auto") hint.textContent = `Phase 2 fine-tunes the layers above ${value}; those below stay frozen.`;
    else if (!chosen) hint.textContent = "Auto picks how much of the backbone to fine-tune from the number of images: choose them to see its pick.";
    else {
      hint.textContent = "Asking what auto picks for these images…";
      const where = chosen.id ? `dataset=${enc(chosen.id)}` : `data=${enc(chosen.path)}`;
      try {
        const answer = await getJSON(`/v1/freeze?backbone=${enc(f.backbone.value)}&weights=${enc(f.weights.value)}&${where}`, { signal });
        if (asked !== freezeAsked) return;
        const pick = answer.freeze === "all" ? "train the new head only"
          : answer.freeze === "none" ? "fine-tune every layer" : `fine-tune above ${answer.freeze}`;
        hint.textContent = `Auto will ${pick}: ${answer.why}`;
      } catch (err) {
        if (asked === freezeAsked && err.name !== "AbortError") hint.textContent = `Auto picks from the data (the server could not say what: ${err.message})`;
      }
    }
  };
  f.backbone.addEventListener("change", backboneChanged);
  f.freeze.addEventListener("change", explainFreeze);
  f.weights.addEventListener("change", explainFreeze);

  const loadBackbones = async () => {
    const answer = await getJSON("/v1/backbones", { signal });
    showBackbones(answer);
    return answer.measuring;
  };
  try {
    const measuring = await loadBackbones();
    f.backbone.value = backbones.some((b) => b.name === "mobilenet_v2") ? "mobilenet_v2" : backbones[0]?.name;
    backboneChanged();
    if (measuring) {
      (async () => {
        while (!signal.aborted) {
          await sleep(3000, signal);
          if (signal.aborted || !(await loadBackbones().catch(() => false))) return;
        }
      })();
    }
  } catch (err) {
    report(err);
    backbones = [{ name: "mobilenet_v2", native_size: 224, min_size: 32, alphas: [0.35, 0.5, 0.75, 1, 1.3, 1.4], freeze_points: [] }];
    backboneChanged();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    hideError();
    if (!chosen) {
      showError("Choose the images first: drop a .zip of class folders, or pick a folder.");
      return;
    }
    const spec = { model: f.model.value.trim(), backbone: f.backbone.value, weights: f.weights.value,
      image_size: f.image_size.valueAsNumber, freeze: f.freeze.value, epochs: f.epochs.valueAsNumber,
      fine_tune_epochs: f.fine_tune_epochs.valueAsNumber };
    if (chosen.id) spec.dataset = chosen.id;
    else spec.data = chosen.path;
    if (!fields.alpha.node.hidden && f.alpha.value) spec.alpha = Number(f.alpha.value);
    if (f.time_budget.value.trim()) spec.time_budget = f.time_budget.value.trim();
    for (const key of ["batch_size", "learning_rate", "fine_tune_learning_rate"]) {
      if (f[key].value !== "") spec[key] = f[key].valueAsNumber;
    }
    if (f.extra.value.trim()) {
      let extra;
      try {
        extra = JSON.parse(f.extra.value);
      } catch (err) {
        extra = null;
      }
      if (!extra || typeof extra !== "object" || Array.isArray(extra)) {
        showError(`More settings must be a JSON object, like {"seed": 1} (received: ${f.extra.value.trim().slice(0, 80)})`);
        f.extra.focus();
        return;
      }
      Object.assign(spec, extra);
    }
    train.disabled = true;
    try {
      const answer = await getJSON("/v1/jobs", { json: spec, signal });
      location.hash = `#/jobs/${enc(answer.id)}`;
    } catch (err) {
      report(err);
    } finally {
      train.disabled = false;
    }
  });
}

/** The pre-flight report: classes and their counts per split, skipped and unreadable files,
 *  warnings. */
function renderReport(box, name, r) {
  const splits = Object.keys(r.counts ?? {});
  const total = (cls) => splits.reduce((sum, s) => sum + (r.counts[s]?.[cls] ?? 0), 0);
  const table = el("table", { class: "counts" },
    el("caption", { text: "Images per class and split" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "class" }),
      splits.map((s) => el("th", { scope: "col", class: "num", text: s })), el("th", { scope: "col", class: "num", text: "total" }))),
    el("tbody", {}, r.classes.map((cls) => el("tr", {},
      el("th", { scope: "row", class: "class-name", text: cls }),
      splits.map((s) => el("td", { class: "num", text: String(r.counts[s]?.[cls] ?? 0) })),
      el("td", { class: "num", text: String(total(cls)) })))));
  const listOf = (items, title, id) => {
    if (!items?.length) return null;
    const shown = items.slice(0, 50);
    return el("details", { id }, el("summary", { text: `${title}: ${items.length}` }),
      el("ul", { class: "files" }, shown.map((x) => el("li", { text: String(x) })),
        items.length > shown.length ? el("li", { text: `…and ${items.length - shown.length} more` }) : null));
  };
  const clean = !r.skipped?.length && !r.unreadable?.length && !r.warnings?.length;
  put(box,
    el("h2", {}, "Pre-flight report: ", el("span", { class: "dataset-name", text: name })),
    el("p", { text: `${r.classes.length} classes` + (r.files != null ? `, ${r.files} files` : "")
      + (r.layout ? `; layout: ${r.layout}` : "") }),
    el("div", { class: "table-wrap" }, table),
    listOf(r.skipped, "Files skipped (not images)", "skipped"),
    listOf(r.unreadable, "Images fit will skip (unreadable)", "unreadable"),
    r.warnings?.length ? el("ul", { class: "warnings" }, r.warnings.map((w) => el("li", { text: w }))) : null,
    clean ? el("p", { class: "ok", text: "No skipped or unreadable files, no warnings." }) : null,
  );
  box.hidden = false;
}

// --- #/models ---------------------------------------------------------------------------------

async function showModels(current) {
  const { models } = await getJSON("/v1/models", { signal: current.signal });
  main.append(heading("Models"));
  if (!models.length) {
    main.append(el("p", { class: "empty" }, "No models yet: a job that succeeds publishes one. ",
      el("a", { href: "#/new" }, "Start a job"), "."));
  }
  for (const model of models) {
    const body = el("tbody");
    main.append(el("section", { class: "card" }, el("h2", { text: model.name }),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Version", "Accuracy", "Images", "Backbone", "Image size", "Published", ""]
          .map((c) => el("th", { scope: "col", text: c })))), body))));
    for (const version of [...model.versions].reverse()) {
      const path = `${enc(model.name)}/${enc(version)}`;
      const cells = [1, 2, 3, 4, 5].map(() => el("td"));
      body.append(el("tr", {}, el("td", {}, el("a", { href: `#/models/${path}` }, `version ${version}`)), cells,
        el("td", {}, el("a", { href: `#/try/${path}` }, "try it"))));
      getJSON(`/v1/models/${path}/metadata`, { signal: current.signal }).then((meta) => {
        const m = meta.metadata.metrics ?? {};
        const r = meta.metadata.retrain ?? {};
        const values = [pct(m.accuracy), m.images ? `${m.images} (${m.split})` : "", r.backbone ?? "",
          r.image_size ? `${r.image_size} px` : "", when(r.created)];
        values.forEach((v, i) => { cells[i].textContent = v; });
      }).catch(report);
    }
  }
}

// --- #/models/<name>/<version> ----------------------------------------------------------------

async function showVersion(current, name, version) {
  const base = `/v1/models/${enc(name)}/versions/${enc(version)}`;
  const meta = await getJSON(`${base}/metadata`, { signal: current.signal });
  const m = meta.metadata.metrics ?? {};
  const r = meta.metadata.retrain ?? {};
  const path = `${enc(name)}/${enc(version)}`;
  const perClass = el("div", { class: "table-wrap" }, el("p", { text: "Loading…" }));
  const matrix = el("img", { id: "confusion-matrix", alt: `confusion matrix of ${name} version ${version}: rows are the true classes, columns the predicted ones` });
  const mistakes = el("div", { class: "thumbs", id: "misclassified" });
  const token = sessionStorage.getItem(TOKEN_KEY);
  const curl = [
    "curl",
    ...(token ? [' -H "Authorization: Bearer $RETRAIN_TOKEN"'] : []),
    ` -d "{\\"instances\\": [{\\"b64\\": \\"$(base64 -w0 image.jpg)\\"}]}"`,
    ` ${location.origin}${base}:predict`,
  ].join(" \\\n ");
  const code = el("pre", { class: "code", id: "curl" }, el("code", { text: curl }));
  const copy = el("button", { type: "button", class: "secondary", text: "Copy" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(curl);
      copy.textContent = "Copied";
    } catch {
      getSelection().selectAllChildren(code);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });

  main.append(
    heading(`${name} · version ${version}`, el("a", { class: "button", href: `#/try/${path}` }, "Try it")),
    el("section", { class: "card" },
      el("p", { class: "big" }, el("span", { class: "figure", id: "accuracy", text: pct(m.accuracy) }), " accuracy"),
      definitionList([
        ["on", m.images ? `${m.images} images of the ${m.split} split` : ""],
        ["backbone", r.backbone], ["image size", r.image_size ? `${r.image_size} px` : ""],
        ["classes", (meta.metadata.labels ?? []).join(", ")],
        ["published", when(r.created)],
        ["trained by", r.job ? el("a", { href: `#/jobs/${enc(r.job)}`, text: `job ${r.job}` }) : ""],
      ])),
    el("section", { class: "card" }, el("h2", { text: "Per class" }), perClass),
    el("section", { class: "card" }, el("h2", { text: "Confusion matrix" }), el("div", { class: "matrix" }, matrix)),
    el("section", { class: "card" }, el("h2", { text: "Misclassified" }), mistakes),
    el("section", { class: "card" }, el("h2", { text: "Call it" }),
      el("p", { text: "Send images as base64 to its :predict endpoint (TensorFlow Serving's REST API):" }),
      code, el("div", { class: "actions" }, copy)),
  );

  loadImage(matrix, `${base}/files/confusion_matrix.png`, current).catch((err) => {
    matrix.replaceWith(el("p", { text: `No confusion matrix: ${err.message}` }));
  });
  getJSON(`${base}/files/metrics.json`, { signal: current.signal }).then((metrics) => {
    const rows = Object.entries(metrics.per_class ?? {});
    const number = (v) => el("td", { class: "num", text: typeof v === "number" ? v.toFixed(2) : "" });
    const topK = Object.entries(metrics.top_k_accuracy ?? {}).filter(([k]) => k !== "1");
    put(perClass, el("table", { id: "per-class" },
      el("thead", {}, el("tr", {}, ["class", "precision", "recall", "F1", "images"].map((c, i) =>
        el("th", { scope: "col", class: i ? "num" : "", text: c })))),
      el("tbody", {}, rows.map(([cls, v]) => el("tr", {}, el("th", { scope: "row", class: "class-name", text: cls }),
        number(v.precision), number(v.recall), number(v.f1), el("td", { class: "num", text: String(v.support) }))))),
      topK.length ? el("p", { text: topK.map(([k, v]) => `top-${k} accuracy ${pct(v)}`).join(" · ") } ) : null);
  }).catch((err) => { if (err.name !== "AbortError") perClass.replaceChildren(el("p", { text: `No per-class figures: ${err.message}` })); });
  getJSON(`${base}/misclassified`, { signal: current.signal }).then(({ images }) => {
    if (!images.length) {
      mistakes.replaceWith(el("p", { id: "misclassified", text: "None: every image of the held-out split was labelled right." }));
      return;
    }
    for (const image of images) {
      const img = el("img", { alt: `${image.file}, a ${image.true_label} taken for a ${image.predicted_label}` });
      mistakes.append(el("figure", { class: "thumb" }, img, el("figcaption", {},
        el("span", { class: "truth", text: image.true_label }), " taken for ",
        el("span", { class: "predicted", text: image.predicted_label }), ` (${pct(Number(image.probability))})`,
        el("br"), el("span", { class: "file", text: image.file.split("/").slice(-1)[0] }))));
      loadImage(img, `${base}/misclassified/${enc(image.index)}`, current).catch(() => {});
    }
  }).catch((err) => {
    if (err.name !== "AbortError") mistakes.replaceWith(el("p", { id: "misclassified", text: `Not available: ${err.message}` }));
  });
}

// --- #/try/<name>/<version> -------------------------------------------------------------------

async function showTry(current, name, version) {
  const base = `/v1/models/${enc(name)}/versions/${enc(version)}`;
  const meta = await getJSON(`${base}/metadata`, { signal: current.signal });
  const results = el("div", { class: "results", id: "results", "aria-live": "polite" });
  const predict = async (files) => {
    hideError();
    const images = files.filter((file) => file.type.startsWith("image/") || !file.type);
    if (!images.length) {
      showError(`Not an image: ${files.map((file) => file.name).join(", ")} (send JPEG, PNG, GIF or BMP files)`);
      return;
    }
    const shown = [];
    const cards = images.map((file) => {
      const url = URL.createObjectURL(file);
      current.cleanups.push(() => URL.revokeObjectURL(url));
      const answer = el("ol", { class: "top5", "aria-label": `top labels for ${file.name}` }, el("li", { text: "…" }));
      const card = el("figure", { class: "result" }, el("img", { src: url, alt: file.name, class: "shot" }),
        el("figcaption", {}, el("span", { class: "file", text: file.name }), answer));
      shown.push(card);
      return answer;
    });
    results.prepend(...shown); // the newest batch first, in the order it was chosen
    try {
      const instances = await Promise.all(images.map(async (file) => ({ b64: await base64(file) })));
      const { predictions } = await getJSON(`${base}:predict`, { json: { instances }, signal: current.signal });
      predictions.forEach((p, i) => {
        cards[i].replaceChildren(...p.classes.map((label, k) => el("li", { class: k ? "" : "best" },
          el("span", { class: "label", text: label }),
          el("span", { class: "meter", "aria-hidden": "true" }, el("span", { class: "fill", style: `width:${(p.scores[k] * 100).toFixed(1)}%` })),
          el("span", { class: "score", text: pct(p.scores[k]) }))));
      });
    } catch (err) {
      cards.forEach((c) => c.replaceChildren(el("li", { text: "no answer" })));
      report(err);
    }
  };
  const onPaste = (event) => {
    const files = [...(event.clipboardData?.files ?? [])];
    if (files.length) {
      event.preventDefault();
      predict(files);
    }
  };
  document.addEventListener("paste", onPaste);
  current.cleanups.push(() => document.removeEventListener("paste", onPaste));
  main.append(
    heading(`Try ${name} · version ${version}`, el("a", { href: `#/models/${enc(name)}/${enc(version)}` }, "About this version")),
    el("section", { class: "card" },
      dropZone("try-files", "Drop images here, or paste one",
        `or press to choose some: JPEG, PNG, GIF or BMP. It knows ${(meta.metadata.labels ?? []).length} classes: `
        + (meta.metadata.labels ?? []).slice(0, 20).join(", "),
        { accept: "image/*", multiple: true }, predict)),
    results,
  );
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] ?? "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// --- the router -------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/jobs\/?$/, showJobs, "jobs"],
  [/^#\/jobs\/([^/]+)$/, showJob, "jobs"],
  [/^#\/new$/, showNew, "new"],
  [/^#\/models\/?$/, showModels, "models"],
  [/^#\/models\/([^/]+)\/([^/]+)$/, showVersion, "models"],
  [/^#\/try\/([^/]+)\/([^/]+)$/, showTry, "models"],
];

function route(moveFocus) {
  const hash = location.hash || "#/jobs";
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!found) {
    location.replace("#/jobs");
    return;
  }
  const [pattern, show, section] = found;
  const current = newView();
  hideError();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.route === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  window.scrollTo(0, 0);
  main.setAttribute("aria-busy", "true");
  const args = hash.match(pattern).slice(1).map(decodeURIComponent);
  show(current, ...args).catch(report).finally(() => {
    if (current.signal.aborted) return;
    main.removeAttribute("aria-busy");
    if (moveFocus) main.focus({ preventScroll: true }); // a screen reader starts at the new page
  });
}

window.addEventListener("hashchange", () => route(true));
route(false);
