// affectclip web page: upload an image or a video, or stream the webcam, and show per-face emotion scores.
// Plain JS, no build step and no CDN; the server's token (if any) travels in an HttpOnly cookie.
"use strict";

const API = "/api/v1";
const COLORS = ["#2f6fde", "#e0731f", "#2e9e52", "#c6343c", "#8a55c9", "#8c5a3c", "#d35fb7", "#6b7280",
                "#b5a513", "#17a2b8", "#1d2330", "#ff8fa3"];
const $ = (id) => document.getElementById(id);
const state = { result: null, name: "result", job: null, live: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(API + path, { credentials: "same-origin", ...options });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const body = isJson ? await response.json() : await response.text();
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    throw new Error((body && body.error) || response.statusText + (retry ? ` (retry in ${retry} s)` : ""));
  }
  return { status: response.status, body };
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(3));

// ------------------------------------------------------------------------------------------- setup

async function init() {
  try {
    const { body: info } = await api("/info");
    $("model-name").textContent = `${info.name} · input ${info.input_size}px`;
    $("labels").value = info.default_labels.join(", ");
    for (const name of info.prompt_sets) {
      $("prompts").append(el("option", name === info.default_prompts ? { selected: "" } : {}, name));
    }
    for (const name of info.detectors) $("detector").append(el("option", {}, name));
    setStatus("Ready: drop an image or a video.");
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  $("file-input").addEventListener("change", (e) => { if (e.target.files.length) analyse(e.target.files[0]); });
  $("webcam-start").addEventListener("click", startWebcam);
  $("webcam-stop").addEventListener("click", stopWebcam);
  $("job-cancel").addEventListener("click", () => {
    if (state.job) api(`/jobs/${state.job.id}`, { method: "DELETE" }).catch((err) => setStatus(err.message, true));
  });
  $("dl-json").addEventListener("click", (e) => { e.preventDefault(); download("json"); });
  $("dl-csv").addEventListener("click", (e) => { e.preventDefault(); download("csv"); });
}

function options() {
  return { labels: $("labels").value, prompts: $("prompts").value, fps: $("fps").value,
           detector: $("detector").value };
}

// ------------------------------------------------------------------------------------------- upload

async function analyse(file) {
  stopWebcam();
  $("result").hidden = true;
  $("progress").hidden = true;
  state.job = null;
  state.name = file.name.replace(/\.[^.]*$/, "") || "result";
  setStatus(`Analysing ${file.name} …`);
  const form = new FormData();
  form.append("file", file);
  for (const [k, v] of Object.entries(options())) form.append(k, v);
  try {
    const { status, body } = await api("/predict", { method: "POST", body: form });
    if (status === 202) {
      state.job = body;
      await followJob(body);
    } else {
      state.result = body;
      await showImage(file, body);
    }
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
  }
}

async function followJob(job) {
  const bar = $("progress");
  bar.hidden = false;
  $("job-cancel").hidden = false;
  try {
    await pollJob(job, bar);
  } finally {
    bar.hidden = true;
    $("job-cancel").hidden = true;
  }
}

async function pollJob(job, bar) {
  for (;;) {
    const { body } = await api(`/jobs/${job.id}`);
    bar.value = body.progress.fraction ?? 0;
    setStatus(`Video job ${body.status}: ${body.progress.frames_done} / ${body.progress.frames_expected ?? "?"} frames`);
    if (body.status === "done") break;
    if (body.status === "failed" || body.status === "cancelled") throw new Error(`job ${body.status}: ${body.error}`);
    await new Promise((r) => setTimeout(r, 400));
  }
  const { body: result } = await api(`/jobs/${job.id}/result`);
  state.result = result;
  showVideo(result);
}

function okRows(result) {
  return result.rows.filter((r) => r.status === "ok");
}

async function showImage(file, result) {
  const img = new Image();
  img.src = URL.createObjectURL(file);
  await img.decode();
  const canvas = $("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  URL.revokeObjectURL(img.src);
  const faces = okRows(result);
  drawBoxes(ctx, faces, 1, Math.max(2, canvas.width / 300));
  faceTable($("faces-table"), result.labels, faces);
  $("timelines").replaceChildren();
  $("view").hidden = false;
  $("result").hidden = false;
  const tops = faces.map((f) => `face ${f.face_id}: ${f.top_label} (${fmt(f.top_score)})`).join("; ");
  setStatus(faces.length ? `${faces.length} face(s) — ${tops}` : "No face found in this image.");
}

function drawBoxes(ctx, faces, scale, width) {
  ctx.lineWidth = width;
  ctx.font = `${Math.round(7 * width)}px system-ui, sans-serif`;
  faces.forEach((f, i) => {
    const color = COLORS[i % COLORS.length];
    const [x0, y0, x1, y1] = [f.x0 ?? f.box[0], f.y0 ?? f.box[1], f.x1 ?? f.box[2], f.y1 ?? f.box[3]].map((v) => v * scale);
    ctx.strokeStyle = color;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const text = `#${f.face_id} ${f.top_label} ${fmt(f.top_score)}`;
    const pad = width * 2;
    const h = 8 * width;
    ctx.fillStyle = color;
    ctx.fillRect(x0, Math.max(0, y0 - h - pad), ctx.measureText(text).width + 2 * pad, h + pad);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x0 + pad, Math.max(h, y0 - pad * 1.5));
  });
}

// One row per face: id, top label, its score, then every label's probability.
function faceTable(table, labels, faces, extra = null) {
  const head = el("tr");
  for (const h of ["face", ...(extra ? [extra.title] : []), "top label", "score", ...labels]) head.append(el("th", {}, h));
  const rows = faces.map((f) => {
    const tr = el("tr", { "data-face-id": String(f.face_id) });
    tr.append(el("td", {}, `#${f.face_id}`));
    if (extra) tr.append(el("td", {}, extra.value(f)));
    tr.append(el("td", { class: "top-label" }, f.top_label));
    tr.append(el("td", { class: "top-score" }, fmt(f.top_score)));
    for (const label of labels) tr.append(el("td", { "data-label": label }, fmt(f.scores ? f.scores[label] : f[label])));
    return tr;
  });
  table.replaceChildren(head, ...rows);
}

function showVideo(result) {
  const faces = new Map();
  for (const r of okRows(result)) {
    if (!faces.has(r.face_id)) faces.set(r.face_id, []);
    faces.get(r.face_id).push(r);
  }
  const labels = result.labels;
  const summary = [...faces.entries()].map(([id, rows]) => {
    const mean = {};
    for (const label of labels) mean[label] = rows.reduce((s, r) => s + r[label], 0) / rows.length;
    const top = labels.reduce((a, b) => (mean[a] >= mean[b] ? a : b));
    return { face_id: id, scores: mean, top_label: top, top_score: mean[top], n: rows.length };
  });
  faceTable($("faces-table"), labels, summary, { title: "frames", value: (f) => String(f.n) });
  const box = $("timelines");
  box.replaceChildren(...[...faces.entries()].map(([id, rows]) => timeline(id, rows, labels)));
  $("view").hidden = true;
  $("result").hidden = false;
  const frames = new Set(result.rows.map((r) => r.frame)).size;
  setStatus(`Video: ${frames} frames scored, ${faces.size} face track(s). Table: mean over each track.`);
}

// An SVG line chart: one line per label, probability (0..1) against time (s).
function timeline(faceId, rows, labels) {
  const W = 900, H = 220, L = 40, R = 10, T = 10, B = 28;
  const t0 = Math.min(...rows.map((r) => r.timestamp)), t1 = Math.max(...rows.map((r) => r.timestamp));
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1e-6)) * (W - L - R);
  const y = (p) => T + (1 - p) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", "100%");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  for (const p of [0, 0.5, 1]) {
    add("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#dde1e8" });
    add("text", { x: 4, y: y(p) + 4, "font-size": 11 }, p.toFixed(1));
  }
  add("text", { x: L, y: H - 8, "font-size": 11 }, `${t0.toFixed(1)} s`);
  add("text", { x: W - R - 40, y: H - 8, "font-size": 11 }, `${t1.toFixed(1)} s`);
  labels.forEach((label, i) => {
    const points = rows.map((r) => `${x(r.timestamp).toFixed(1)},${y(r[label]).toFixed(1)}`).join(" ");
    add("polyline", { points, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2,
                      "data-label": label });
  });
  const wrap = el("div", { class: "timeline", "data-face-id": String(faceId) });
  wrap.append(el("h3", {}, `Face #${faceId} over time`), svg);
  const legend = el("div", { class: "legend" });
  labels.forEach((label, i) => {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, label);
    legend.append(item);
  });
  wrap.append(legend);
  return wrap;
}

// ------------------------------------------------------------------------------------------- downloads

function csvCell(v) {
  if (v === null || v === undefined) return "";
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function download(kind) {
  if (!state.result) return;
  if (kind === "csv" && state.job) {
    window.location = `${API}/jobs/${state.job.id}/result?format=csv`;
    return;
  }
  const r = state.result;
  const text = kind === "json" ? JSON.stringify(r, null, 1)
    : [r.columns.join(","), ...r.rows.map((row) => r.columns.map((c) => csvCell(row[c])).join(","))].join("\n") + "\n";
  const link = el("a", { download: `${state.name}.${kind}` });
  link.href = URL.createObjectURL(new Blob([text], { type: kind === "json" ? "application/json" : "text/csv" }));
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ------------------------------------------------------------------------------------------- webcam

async function startWebcam() {
  $("result").hidden = true;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    setStatus(`Webcam not available: ${err.message}`, true);
    return;
  }
  const video = $("webcam");
  video.srcObject = stream;
  await video.play();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${API}/live`);
  const live = { ws, stream, times: [], frames: 0, grab: document.createElement("canvas"), stopped: false };
  state.live = live;
  $("live").hidden = false;
  $("webcam-start").hidden = true;
  $("webcam-stop").hidden = false;
  ws.onopen = () => {
    const o = options();
    ws.send(JSON.stringify({ labels: o.labels, prompts: o.prompts, detector: o.detector }));
  };
  ws.onmessage = (e) => onLiveMessage(live, JSON.parse(e.data));
  ws.onclose = (e) => { if (!live.stopped) setStatus(`Live connection closed (${e.reason || e.code})`, true); };
}

function sendFrame(live) {
  if (live.stopped || live.ws.readyState !== WebSocket.OPEN) return;
  const video = $("webcam");
  const scale = Math.min(1, 480 / (video.videoWidth || 480));
  live.grab.width = Math.round((video.videoWidth || 480) * scale);
  live.grab.height = Math.round((video.videoHeight || 360) * scale);
  live.grab.getContext("2d").drawImage(video, 0, 0, live.grab.width, live.grab.height);
  live.grab.toBlob((blob) => { if (!live.stopped && blob) live.ws.send(blob); }, "image/jpeg", 0.8);
}

function onLiveMessage(live, msg) {
  if (msg.config) {
    setStatus(`Live: scoring ${msg.config.labels.join(", ")}`);
    sendFrame(live);
    return;
  }
  if (msg.error) {
    setStatus(`Live: ${msg.error}`, true);
    if (msg.frame === undefined) return stopWebcam();
  } else if (msg.busy) {
    setTimeout(() => sendFrame(live), 1000 * msg.retry_after);
    return;
  } else {
    live.frames += 1;
    const now = performance.now();
    live.times.push(now);
    while (live.times.length > 1 && now - live.times[0] > 2000) live.times.shift();
    const span = (live.times[live.times.length - 1] - live.times[0]) / 1000;
    $("live-fps").textContent = span > 0 ? ((live.times.length - 1) / span).toFixed(1) : "0.0";
    $("live-frames").textContent = String(live.frames);
    drawOverlay(msg);
    faceTable($("live-table"), msg.labels, msg.faces);
  }
  sendFrame(live);
}

function drawOverlay(msg) {
  const overlay = $("overlay");
  const video = $("webcam");
  overlay.width = video.clientWidth;
  overlay.height = video.clientHeight;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  drawBoxes(ctx, msg.faces, overlay.width / msg.width, 2);
}

function stopWebcam() {
  const live = state.live;
  if (!live) return;
  live.stopped = true;
  live.ws.close();
  live.stream.getTracks().forEach((t) => t.stop());
  state.live = null;
  $("webcam-start").hidden = false;
  $("webcam-stop").hidden = true;
}

init();
