"""The operator page: one self-contained HTML document (no external resources; the line PC may be offline).

It polls `state.json` and redraws; relative URLs keep it working behind a reverse proxy under a sub-path."""

from __future__ import annotations

PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>D3AD operator view</title>
<style>
  :root { --good: #1e7b34; --defect: #b3261e; --idle: #5f6368; --ink: #1f1f1f; --line: #d8d8d8; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; color: var(--ink); background: #f4f4f2; }
  header { display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; align-items: baseline; padding: 0.7rem 1.2rem;
           background: #222; color: #fff; }
  header h1 { font-size: 1.15rem; margin: 0; }
  header .field span { opacity: 0.7; margin-right: 0.3rem; }
  .chip { padding: 0.05rem 0.5rem; border-radius: 0.7rem; background: var(--idle); }
  .chip.ok { background: var(--good); }
  .chip.bad { background: var(--defect); }
  main { display: grid; grid-template-columns: minmax(260px, 640px) minmax(260px, 1fr); gap: 1.2rem;
         padding: 1.2rem; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  .panel { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 0.8rem; }
  #overlay { display: block; width: 100%; min-height: 12rem; max-height: 65vh; object-fit: contain;
             background: #111; }
  #overlay-caption { margin-top: 0.4rem; font-size: 0.85rem; color: #555; word-break: break-all; }
  .verdict { color: #fff; background: var(--idle); border-radius: 6px; padding: 0.8rem 1rem; font-size: 2.4rem;
             font-weight: 700; letter-spacing: 0.05em; text-align: center; }
  .verdict.good { background: var(--good); }
  .verdict.defect { background: var(--defect); }
  #verdict-detail { text-align: center; margin: 0.5rem 0 1rem; }
  .counters { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 0.6rem; }
  .counter { border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 0.7rem; }
  .counter .label { font-size: 0.8rem; color: #555; }
  .counter .value { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
  #last-error { margin-top: 0.8rem; color: var(--defect); word-break: break-word; }
  section.recent { grid-column: 1 / -1; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--line); }
  td.verdict-cell { font-weight: 700; }
  tr[data-verdict="good"] td.verdict-cell { color: var(--good); }
  tr[data-verdict="defect"] td.verdict-cell { color: var(--defect); }
  footer { padding: 0 1.2rem 1.2rem; font-size: 0.85rem; }
  footer .bad { color: var(--defect); font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>D3AD operator view</h1>
  <div class="field"><span>device</span><b id="device-id">-</b></div>
  <div class="field"><span>model</span><b id="model-version">-</b></div>
  <div class="field"><span>state</span><b id="state" class="chip">-</b></div>
  <div class="field"><span>camera</span><b id="camera" class="chip">-</b></div>
  <div class="field"><span>broker</span><b id="broker" class="chip">-</b></div>
</header>
<main>
  <section class="panel">
    <img id="overlay" alt="heatmap overlay of the latest part">
    <div id="overlay-caption">waiting for the first part</div>
  </section>
  <section class="panel">
    <div id="verdict" class="verdict" data-verdict="">WAITING</div>
    <div id="verdict-detail">-</div>
    <div class="counters">
      <div class="counter"><div class="label">inspected</div><div class="value" id="inspected">-</div></div>
      <div class="counter"><div class="label">defects</div><div class="value" id="defects">-</div></div>
      <div class="counter"><div class="label">dropped frames</div><div class="value" id="dropped">-</div></div>
      <div class="counter"><div class="label">latency p50 (ms)</div><div class="value" id="latency-p50">-</div></div>
      <div class="counter"><div class="label">latency p99 (ms)</div><div class="value" id="latency-p99">-</div></div>
      <div class="counter"><div class="label">frames in</div><div class="value" id="frames-in">-</div></div>
      <div class="counter"><div class="label">errors</div><div class="value" id="errors">-</div></div>
      <div class="counter"><div class="label">unsent results</div><div class="value" id="outbox">-</div></div>
    </div>
    <div id="last-error"></div>
  </section>
  <section class="panel recent">
    <table>
      <thead><tr><th>time</th><th>part</th><th>verdict</th><th>score</th><th>threshold</th><th>regions</th>
        <th>latency (ms)</th><th>model</th></tr></thead>
      <tbody id="recent"></tbody>
    </table>
  </section>
</main>
<footer><span id="link">connecting...</span></footer>
<script>
"use strict";
const byId = (id) => document.getElementById(id);
let shownPart = null;
let lastAnswer = null;

function show(id, value) {
  byId(id).textContent = value === null || value === undefined ? "-" : String(value);
}

function fixed(value, digits) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function chip(id, label, good) {
  show(id, label);
  byId(id).className = "chip " + (good ? "ok" : "bad");
}

function clockTime(iso) {
  const when = new Date(iso);
  return isNaN(when) ? iso : when.toLocaleTimeString();
}

function row(part) {
  const tr = document.createElement("tr");
  tr.dataset.partId = part.part_id;
  tr.dataset.verdict = part.verdict;
  const cells = [clockTime(part.time), part.part_id, part.verdict, fixed(part.score, 4), fixed(part.threshold, 4),
                 part.defects, fixed(part.latency_ms, 1), part.model_version];
  cells.forEach((value, index) => {
    const td = document.createElement("td");
    td.textContent = String(value);
    if (index === 2) td.className = "verdict-cell";
    tr.appendChild(td);
  });
  return tr;
}

function showLatest(latest) {
  const verdict = byId("verdict");
  if (!latest) return;
  verdict.textContent = latest.verdict.toUpperCase();
  verdict.className = "verdict " + latest.verdict;
  verdict.dataset.verdict = latest.verdict;
  verdict.dataset.partId = latest.part_id;
  show("verdict-detail", "score " + fixed(latest.score, 4) + " / threshold " + fixed(latest.threshold, 4) +
       " \\u00b7 " + latest.defects + " region(s) \\u00b7 " + fixed(latest.latency_ms, 1) + " ms");
  if (latest.part_id !== shownPart) {
    shownPart = latest.part_id;
    byId("overlay").src = "overlay.jpg?part=" + encodeURIComponent(latest.part_id);
    show("overlay-caption", latest.part_id + " \\u00b7 model " + latest.model_version);
  }
}

function render(s) {
  show("device-id", s.device_id);
  show("model-version", s.model_version);
  chip("state", s.state, s.state === "running");
  chip("camera", s.camera, s.camera === "streaming");
  chip("broker", s.broker_connected ? "connected" : "disconnected", s.broker_connected);
  const c = s.counters;
  show("inspected", c.inspected);
  show("defects", c.defects);
  show("dropped", c.dropped);
  show("latency-p50", fixed(c.latency_p50_ms, 1));
  show("latency-p99", fixed(c.latency_p99_ms, 1));
  show("frames-in", c.frames_in);
  show("errors", c.errors);
  show("outbox", c.outbox_depth);
  byId("last-error").textContent = s.last_error ? "last error: " + s.last_error : "";
  showLatest(s.recent[0]);
  byId("recent").replaceChildren(...s.recent.map(row));
}

async function poll() {
  let delay = 2000;
  try {
    const response = await fetch("state.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const state = await response.json();
    render(state);
    delay = state.refresh_s * 1000;
    lastAnswer = new Date();
    byId("link").textContent = "updated " + lastAnswer.toLocaleTimeString();
    byId("link").className = "";
  } catch (error) {
    const since = lastAnswer ? " since " + lastAnswer.toLocaleTimeString() : "";
    byId("link").textContent = "no answer from the device" + since + " (" + error.message + ")";
    byId("link").className = "bad";
  }
  setTimeout(poll, delay);
}

poll();
</script>
</body>
</html>
"""
