// garment_gen design studio: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

const state = {
  model: null,
  samples: [],
  shape: null,    // {kind: "sample", id, label} | {kind: "file", blob, label} | {kind: "drawn", label}
  texture: null,  // {kind: "sample", id, label} | {kind: "file", blob, label}
  tray: { shapes: [], textures: [] },
  maxGrid: 8,
  resultUrl: null,
  busy: 0,
  drawn: false,
};

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const thumbUrl = (id, kind) => `/api/samples/${encodeURIComponent(id)}/${kind}.png`;

async function errorText(resp) {
  try {
    const j = await resp.json();
    return j.error || `HTTP ${resp.status}`;
  } catch (_) {
    return `HTTP ${resp.status}`;
  }
}

function showError(box, text) {
  const b = $(box);
  b.textContent = text || "";
  b.hidden = !text;
}

function setBusy(on) {
  state.busy += on ? 1 : -1;
  $("#busy").hidden = state.busy <= 0;
}

function canvasBlob() {
  return new Promise((resolve) => $("#draw-canvas").toBlob(resolve, "image/png"));
}

async function addInput(form, name, item) {
  if (item.kind === "sample") form.append(`${name}_id`, item.id);
  else if (item.kind === "file") form.append(name, item.blob, item.filename || `${name}.png`);
  else if (item.kind === "drawn") form.append(name, item.blob || (await canvasBlob()), "drawn.png");
}

function preview(item, kind) {
  if (item.kind === "sample") return thumbUrl(item.id, kind === "shape" ? "mask" : "image");
  return item.url;
}

function options(form) {
  if (state.model) form.append("model", state.model);
  form.append("truncation", $("#truncation").value);
  const seed = $("#seed").value.trim();
  if (seed) form.append("seed", seed);
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const resp = await fetch("/api/models");
  const data = await resp.json();
  state.maxGrid = data.limits.max_grid;
  const sel = $("#model-select");
  sel.innerHTML = "";
  for (const m of data.models) {
    sel.append(el("option", { value: m.name, text: m.name + (m.default ? "" : " (loads on first use)") }));
  }
  sel.value = data.default;
  state.model = data.default;
  const show = () => {
    const m = data.models.find((x) => x.name === sel.value);
    state.model = m.name;
    const aspect = m.aspect && m.aspect !== "1:1" ? `, ${m.aspect}` : "";
    $("#model-res").textContent = m.resolution ? `${m.resolution} px${aspect}` : "";
    const body = $("#model-card-body");
    body.innerHTML = "";
    const card = m.card || {};
    body.append(el("strong", { text: card.title || m.name }));
    if (card.summary) body.append(el("p", { text: card.summary }));
    if (card.status) body.append(el("p", { class: "muted", text: card.status }));
    if (card.metrics && card.metrics.length) {
      const t = el("table", {}, [el("tr", {}, [el("th", { text: "test metric" }), el("th", { text: "model" }), el("th", { text: "paste baseline" })])]);
      for (const r of card.metrics) t.append(el("tr", {}, [el("td", { text: r.metric }), el("td", { text: r.model }), el("td", { text: r.baseline })]));
      body.append(t);
    }
  };
  sel.addEventListener("change", () => { show(); live(); });
  show();
}

// ------------------------------------------------------------------ galleries

function buildFilter(box, gallery) {
  const labels = ["all", ...new Set(state.samples.map((s) => s.label))];
  const f = $(box);
  f.innerHTML = "";
  for (const lab of labels) {
    f.append(el("button", {
      text: lab, class: lab === "all" ? "active" : "",
      onclick: (ev) => {
        for (const b of f.children) b.classList.toggle("active", b === ev.target);
        for (const t of $(gallery).children) t.hidden = lab !== "all" && t.dataset.label !== lab;
      },
    }));
  }
}

function buildGallery(box, kind) {
  const g = $(box);
  g.innerHTML = "";
  for (const s of state.samples) {
    const b = el("button", {
      class: "thumb", title: `${s.label} (${s.split})`, "data-sample-id": s.id, "data-label": s.label,
      onclick: () => pick(kind, { kind: "sample", id: s.id, label: s.label }, b),
    }, [el("img", { src: thumbUrl(s.id, kind === "shape" ? "mask" : "image"), alt: s.label, loading: "lazy" })]);
    g.append(b);
  }
}

async function loadSamples() {
  const resp = await fetch("/api/samples");
  state.samples = (await resp.json()).samples;
  buildGallery("#shape-gallery", "shape");
  buildGallery("#texture-gallery", "texture");
  buildFilter("#shape-filter", "#shape-gallery");
  buildFilter("#texture-filter", "#texture-gallery");
}

function pick(kind, item, button) {
  state[kind] = item;
  const gallery = kind === "shape" ? "#shape-gallery" : "#texture-gallery";
  for (const t of $(gallery).children) t.classList.toggle("selected", t === button);
  const cur = $(`#${kind}-current`);
  cur.innerHTML = "";
  cur.append(el("img", { src: preview(item, kind), alt: "" }), el("span", { text: item.label }));
  live();
}

// ------------------------------------------------------------------ uploads

function wireUpload(kind) {
  const input = $(`#${kind}-file`);
  const drop = $(`#${kind}-drop`);
  const take = (file) => {
    if (!file) return;
    const url = URL.createObjectURL(file);
    pick(kind, { kind: "file", blob: file, filename: file.name, url, label: file.name || "upload" }, null);
  };
  input.addEventListener("change", () => take(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------ drawing

const draw = { tool: "brush", down: false, last: null };

function canvasCtx() {
  return $("#draw-canvas").getContext("2d", { willReadFrequently: true });
}

function clearCanvas() {
  const ctx = canvasCtx();
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 256, 256);
  state.drawn = false;
}

function canvasPoint(ev) {
  const c = $("#draw-canvas");
  const r = c.getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * c.width, ((ev.clientY - r.top) / r.height) * c.height];
}

function stroke(from, to) {
  const ctx = canvasCtx();
  ctx.strokeStyle = ctx.fillStyle = draw.tool === "eraser" ? "#000" : "#fff";
  ctx.lineWidth = Number($("#brush-size").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
}

// Scanline flood fill of the region under (x, y) with white (the garment colour).
function floodFill(x, y) {
  const ctx = canvasCtx();
  const w = 256, h = 256;
  const img = ctx.getImageData(0, 0, w, h);
  const d = img.data;
  const on = (i) => d[i * 4] > 127;
  x = Math.floor(x); y = Math.floor(y);
  const target = on(y * w + x);
  if (target) return;  // already garment
  const stack = [[x, y]];
  while (stack.length) {
    let [cx, cy] = stack.pop();
    let i = cy * w + cx;
    while (cx >= 0 && !on(i)) { cx--; i--; }
    cx++; i++;
    let up = false, down = false;
    while (cx < w && !on(i)) {
      d[i * 4] = d[i * 4 + 1] = d[i * 4 + 2] = 255; d[i * 4 + 3] = 255;
      if (cy > 0) { const u = !on(i - w); if (u && !up) stack.push([cx, cy - 1]); up = u; }
      if (cy < h - 1) { const v = !on(i + w); if (v && !down) stack.push([cx, cy + 1]); down = v; }
      cx++; i++;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawnChanged() {
  state.drawn = true;
  pick("shape", { kind: "drawn", label: "your drawing", url: $("#draw-canvas").toDataURL("image/png") }, null);
}

function wireCanvas() {
  const c = $("#draw-canvas");
  clearCanvas();
  c.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    c.setPointerCapture(ev.pointerId);
    const p = canvasPoint(ev);
    if (draw.tool === "fill") { floodFill(p[0], p[1]); drawnChanged(); return; }
    draw.down = true;
    draw.last = p;
    stroke(p, p);
  });
  c.addEventListener("pointermove", (ev) => {
    if (!draw.down) return;
    const p = canvasPoint(ev);
    stroke(draw.last, p);
    draw.last = p;
  });
  const end = () => { if (draw.down) { draw.down = false; drawnChanged(); } };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  for (const b of $$(".tool[data-tool]")) {
    b.addEventListener("click", () => {
      draw.tool = b.dataset.tool;
      for (const o of $$(".tool[data-tool]")) o.classList.toggle("active", o === b);
    });
  }
  $("#draw-clear").addEventListener("click", () => { clearCanvas(); });
  $("#draw-from-shape").addEventListener("click", () => {
    if (!state.shape || state.shape.kind === "drawn") return;
    const img = new Image();
    img.onload = () => {
      clearCanvas();
      const ctx = canvasCtx();
      ctx.imageSmoothingEnabled = true;
      const s = Math.min(256 / img.width, 256 / img.height);
      ctx.drawImage(img, (256 - img.width * s) / 2, (256 - img.height * s) / 2, img.width * s, img.height * s);
      drawnChanged();
    };
    img.src = preview(state.shape, "shape");
  });
}

// ------------------------------------------------------------------ generation

let generation = 0;

async function generate() {
  showError("#error", "");
  if (!state.shape || !state.texture) {
    showError("#error", !state.shape ? "Pick or draw a shape first." : "Pick or upload a texture first.");
    return;
  }
  const mine = ++generation;
  const form = new FormData();
  await addInput(form, "shape", state.shape);
  await addInput(form, "texture", state.texture);
  options(form);
  setBusy(true);
  try {
    const resp = await fetch("/api/generate", { method: "POST", body: form });
    if (mine !== generation) return;  // a newer request was sent meanwhile
    if (!resp.ok) { showError("#error", await errorText(resp)); return; }
    const blob = await resp.blob();
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = URL.createObjectURL(blob);
    const img = $("#result-img");
    img.src = state.resultUrl;
    img.hidden = false;
    img.dataset.generation = String(mine);
    $("#result-empty").hidden = true;
    const dl = $("#download");
    dl.href = state.resultUrl;
    dl.download = `garment_${(state.shape.label || "shape").replace(/\W+/g, "_")}__${(state.texture.label || "texture").replace(/\W+/g, "_")}.png`;
    dl.hidden = false;
    $("#result-caption").textContent = `${state.shape.label} shape × ${state.texture.label} texture · ${resp.headers.get("X-Model") || ""}`;
  } catch (e) {
    showError("#error", `The studio server did not answer (${e.message}).`);
  } finally {
    setBusy(false);
  }
}

let liveTimer = null;
function live() {
  if (!$("#live").checked || !state.shape || !state.texture) return;
  clearTimeout(liveTimer);
  liveTimer = setTimeout(generate, 120);
}

async function variations() {
  showError("#error", "");
  if (!state.shape || !state.texture) { showError("#error", "Pick a shape and a texture first."); return; }
  const form = new FormData();
  await addInput(form, "shape", state.shape);
  await addInput(form, "texture", state.texture);
  options(form);
  form.append("variations", $("#vary-n").value);
  form.append("strength", $("#strength").value);
  setBusy(true);
  try {
    const resp = await fetch("/api/generate", { method: "POST", body: form });
    if (!resp.ok) { showError("#error", await errorText(resp)); return; }
    const data = await resp.json();
    const strip = $("#variations");
    strip.innerHTML = "";
    data.images.forEach((b64, k) => {
      const url = `data:image/png;base64,${b64}`;
      strip.append(el("a", { href: url, download: `variation_${data.seed}_${k + 1}.png`, title: "click to download" },
        [el("img", { src: url, alt: `variation ${k + 1}` })]));
    });
  } finally {
    setBusy(false);
  }
}

// ------------------------------------------------------------------ grid

function renderTray() {
  for (const kind of ["shapes", "textures"]) {
    const box = $(`#tray-${kind}`);
    box.innerHTML = "";
    const items = state.tray[kind];
    if (!items.length) box.append(el("span", { class: "muted", text: "none yet" }));
    items.forEach((item, k) => {
      box.append(el("div", { class: "chip", title: item.label }, [
        el("img", { src: preview(item, kind === "shapes" ? "shape" : "texture"), alt: item.label }),
        el("button", { text: "×", title: "remove", onclick: () => { items.splice(k, 1); renderTray(); } }),
      ]));
    });
  }
}

async function addToTray(kind) {
  const item = state[kind === "shapes" ? "shape" : "texture"];
  if (!item) return;
  const list = state.tray[kind];
  if (list.length >= state.maxGrid) { showError("#grid-error", `At most ${state.maxGrid} ${kind} per grid.`); return; }
  const copy = { ...item };
  if (copy.kind === "drawn") { copy.blob = await canvasBlob(); copy.url = $("#draw-canvas").toDataURL("image/png"); }
  list.push(copy);
  renderTray();
}

// Mean colour of a thumbnail's garment pixels (those not near-white), or null if not loaded.
function garmentColour(img) {
  if (!img.complete || !img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = c.height = 32;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0, 32, 32);
  const d = ctx.getImageData(0, 0, 32, 32).data;
  const sum = [0, 0, 0];
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 235 && d[i + 1] > 235 && d[i + 2] > 235) continue;
    sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; n++;
  }
  return n ? sum.map((v) => v / n) : null;
}

// Samples for a first grid: shapes of different kinds, textures of clearly different colours.
function fillTray() {
  const seen = new Set();
  const shapes = [];
  for (const s of state.samples) {
    if (!seen.has(s.label) && shapes.length < 4) { seen.add(s.label); shapes.push(s); }
  }
  const thumbs = Array.from($("#texture-gallery").children);
  const coloured = thumbs.map((t) => ({ t, c: garmentColour(t.querySelector("img")) })).filter((x) => x.c);
  const textures = [];
  if (coloured.length >= 5) {
    const sat = (c) => Math.max(...c) - Math.min(...c);
    coloured.sort((a, b) => sat(b.c) - sat(a.c));
    textures.push(coloured[0]);
    while (textures.length < 5) {  // farthest point from those picked
      let best = null, bestD = -1;
      for (const x of coloured) {
        const dist = Math.min(...textures.map((p) => p.c.reduce((acc, v, k) => acc + (v - x.c[k]) ** 2, 0)));
        if (dist > bestD) { bestD = dist; best = x; }
      }
      textures.push(best);
    }
  }
  const byId = Object.fromEntries(state.samples.map((s) => [s.id, s]));
  const picked = textures.length ? textures.map((x) => byId[x.t.dataset.sampleId]) : state.samples.slice(-5);
  const item = (s) => ({ kind: "sample", id: s.id, label: s.label });
  state.tray.shapes = shapes.map(item);
  state.tray.textures = picked.map(item);
  renderTray();
}

async function makeGrid() {
  showError("#grid-error", "");
  const { shapes, textures } = state.tray;
  if (!shapes.length || !textures.length) {
    showError("#grid-error", "Add at least one shape and one texture (or try the samples).");
    return;
  }
  const form = new FormData();
  for (const s of shapes) await addInput(form, "shape", s);
  for (const t of textures) await addInput(form, "texture", t);
  options(form);
  const btn = $("#make-grid");
  btn.disabled = true;
  try {
    const resp = await fetch("/api/grid", { method: "POST", body: form });
    if (!resp.ok) { showError("#grid-error", await errorText(resp)); return; }
    const data = await resp.json();
    const gridUrl = `data:image/png;base64,${data.grid}`;
    const img = $("#grid-img");
    img.src = gridUrl;
    img.hidden = false;
    $("#grid-empty").hidden = true;
    const g = $("#grid-download");
    g.href = gridUrl;
    g.hidden = false;
    const bytes = Uint8Array.from(atob(data.zip), (c) => c.charCodeAt(0));
    const z = $("#zip-download");
    if (z.href) URL.revokeObjectURL(z.href);
    z.href = URL.createObjectURL(new Blob([bytes], { type: "application/zip" }));
    z.hidden = false;
  } finally {
    btn.disabled = false;
  }
}

// ------------------------------------------------------------------ wiring

function wireTabs() {
  for (const tab of $$(".tab")) {
    tab.addEventListener("click", () => {
      const panel = tab.closest(".panel");
      for (const t of panel.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      for (const b of panel.querySelectorAll(".tab-body")) b.classList.toggle("active", b.id === tab.dataset.tab);
    });
  }
}

async function init() {
  wireTabs();
  wireUpload("shape");
  wireUpload("texture");
  wireCanvas();
  $("#generate").addEventListener("click", generate);
  $("#vary").addEventListener("click", variations);
  $("#add-shape").addEventListener("click", () => addToTray("shapes"));
  $("#add-texture").addEventListener("click", () => addToTray("textures"));
  $("#grid-fill").addEventListener("click", fillTray);
  $("#make-grid").addEventListener("click", makeGrid);
  for (const id of ["#truncation", "#seed"]) $(id).addEventListener("change", live);
  try {
    await Promise.all([loadModels(), loadSamples()]);
    document.body.dataset.ready = "1";
  } catch (e) {
    showError("#error", `Cannot reach the studio server (${e.message}).`);
  }
}

document.addEventListener("DOMContentLoaded", init);
