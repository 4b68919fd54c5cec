// her2score slide viewer: pick or upload a slide, see it in OpenSeadragon, score it, toggle overlays.
// Hand-written, no framework. The server's API is described at /docs.
"use strict";

const state = { token: "", base: null, info: null, viewer: null, layers: {}, loading: 0 };
window.her2view = state; // for the browser test and for debugging from the console

const $ = (id) => document.getElementById(id);
const LAYER_OPACITY = { heatmap: 0.75, cells: 1.0 };

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

// fetch with the token; a 401 opens the token box; other errors carry the server's "detail"
async function api(url, options) {
  const reply = await fetch(url, Object.assign({ headers: headers() }, options || {}));
  if (reply.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs its API token: enter it above");
  }
  if (!reply.ok) {
    let detail = reply.statusText;
    try { detail = (await reply.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail + " (HTTP " + reply.status + ")");
  }
  return reply;
}

function mppQuery() {
  const value = $("mpp").value.trim();
  return value ? "?mpp=" + encodeURIComponent(value) : "";
}

async function loadSlides() {
  const select = $("slides");
  try {
    const names = (await (await api("/api/slides")).json()).slides;
    select.innerHTML = '<option value="">(choose a slide)</option>';
    for (const name of names) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.appendChild(option);
    }
  } catch (err) {
    select.innerHTML = '<option value="">(no data folder: upload a file)</option>';
    if (String(err.message).indexOf("token") >= 0) setStatus(err.message, true);
  }
}

function makeViewer() {
  if (state.viewer) return state.viewer;
  state.viewer = OpenSeadragon({
    element: $("viewer"),
    prefixUrl: "/static/vendor/openseadragon/images/",
    drawer: "canvas", // context-2d: readable pixels, no GPU needed
    showNavigator: true,
    crossOriginPolicy: false,
    maxZoomPixelRatio: 4,
  });
  return state.viewer;
}

// Show the source at `base` (/api/slides/NAME or /api/uploads/SHA256): tiles come from its deep-zoom levels.
async function openSource(base) {
  clearResult();
  state.base = base;
  setStatus("opening…");
  const info = await (await api(base + "/info")).json();
  state.info = info;
  const viewer = makeViewer();
  viewer.loadTilesWithAjax = Boolean(state.token);
  viewer.ajaxHeaders = headers();
  // resolved once the slide is in the world, so that overlays added next are drawn above it
  await new Promise((resolve, reject) => {
    viewer.addOnceHandler("open", resolve);
    viewer.addOnceHandler("open-failed", (e) => reject(new Error("cannot open: " + e.message)));
    viewer.open({
      width: info.width,
      height: info.height,
      tileSize: info.tile_size,
      tileOverlap: 0,
      minLevel: 0,
      maxLevel: info.levels.length - 1,
      getTileUrl: (level, x, y) => base + "/slide_files/" + level + "/" + x + "_" + y + ".jpeg",
    });
  });
  const mpp = info.mpp ? info.mpp.toPrecision(3) + " µm/px" : "µm/px unknown: give it before scoring";
  setStatus(info.name + ": " + info.width + " × " + info.height + " px, " + mpp);
  $("score").disabled = false;
}

function clearLayers() {
  if (state.viewer) {
    for (const name of Object.keys(state.layers)) state.viewer.world.removeItem(state.layers[name]);
  }
  state.layers = {};
}

function clearResult() {
  clearLayers();
  $("result").hidden = true;
  $("category").textContent = "";
  $("legend").innerHTML = "";
}

function row(table, label, value) {
  const tr = table.insertRow();
  tr.insertCell().textContent = label;
  const td = tr.insertCell();
  td.className = "num";
  if (value instanceof Node) td.appendChild(value); else td.textContent = value;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function showScore(body) {
  const q = body.quantifier || {};
  $("category").textContent = body.category;
  $("subtype").textContent = q.her2_0_subtype ? "(" + q.her2_0_subtype + ")" : "";
  const figures = $("figures");
  figures.innerHTML = "";
  if (q.scorable === false) row(figures, "not scorable", q.reason);
  row(figures, "3-way group", q.her2_3way || "–");
  row(figures, "% complete, intense", fixed(q.pct_intense_complete, 1));
  row(figures, "% complete, moderate", fixed(q.pct_moderate_complete, 1));
  row(figures, "% complete, faint", fixed(q.pct_faint_complete, 1));
  row(figures, "% incomplete, faint", fixed(q.pct_faint_incomplete, 1));
  row(figures, "% no staining", fixed(q.pct_none, 1));
  row(figures, "tumour cells", q.n_tumour_cells);
  row(figures, "H-score", fixed(q.h_score, 0));
  row(figures, "HER2 index", fixed(q.her2_index, 1));
  row(figures, "µm/px", fixed(q.mpp, 3));
  const probs = $("probabilities");
  probs.innerHTML = "";
  $("model-title").hidden = !body.probabilities;
  if (body.probabilities) {
    $("model-title").textContent = "Model " + body.model + ": " + body.predicted;
    for (const [name, p] of Object.entries(body.probabilities)) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round(60 * p) + "px";
      const cell = document.createElement("span");
      cell.append(bar, " " + (100 * p).toFixed(1) + " %");
      row(probs, name, cell);
    }
  }
  $("result").hidden = false;
}

function showLegend(body) {
  const legend = $("legend");
  legend.innerHTML = "";
  const colours = (body.layers.cells || {}).legend || {};
  for (const [name, rgb] of Object.entries(colours)) {
    const div = document.createElement("div");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + rgb.join(",") + ")";
    div.append(swatch, name);
    legend.appendChild(div);
  }
  for (const [name, why] of Object.entries(body.layers_missing || {})) {
    const div = document.createElement("div");
    div.textContent = name + ": " + why;
    legend.appendChild(div);
  }
}

// An overlay PNG placed by its level-0 rectangle (world units: the slide's width is 1).
async function addLayer(name, layer) {
  const blob = await (await api(layer.url)).blob();
  const url = URL.createObjectURL(blob);
  const width = state.info.width;
  state.loading += 1;
  state.viewer.addTiledImage({
    tileSource: { type: "image", url: url },
    x: layer.x / width,
    y: layer.y / width,
    width: layer.width / width,
    opacity: $("layer-" + name).checked ? LAYER_OPACITY[name] : 0,
    success: (event) => { state.layers[name] = event.item; state.loading -= 1; },
    error: () => { state.loading -= 1; setStatus("the " + name + " layer could not be drawn", true); },
  });
}

function toggle(name) {
  const item = state.layers[name];
  if (item) item.setOpacity($("layer-" + name).checked ? LAYER_OPACITY[name] : 0);
}

async function scoreCurrent(body) {
  setStatus("scoring…");
  $("score").disabled = true;
  try {
    if (!body) body = await (await api(state.base + "/score" + mppQuery())).json();
    clearLayers(); // scoring again (another µm/px) replaces the layers, never stacks them
    showScore(body);
    showLegend(body);
    for (const name of ["heatmap", "cells"]) {
      if (body.layers[name]) await addLayer(name, body.layers[name]);
    }
    setStatus("scored " + body.file);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("score").disabled = false;
  }
}

async function upload(file) {
  setStatus("uploading " + file.name + "…");
  const form = new FormData();
  form.append("file", file);
  try {
    const body = await (await api("/api/score" + mppQuery(), { method: "POST", body: form })).json();
    if (!body.upload) throw new Error("the file was scored but is too large to keep for viewing");
    $("slides").value = "";
    await openSource("/api/uploads/" + body.upload);
    await scoreCurrent(body);
  } catch (err) {
    setStatus(err.message, true);
  }
}

function start() {
  if (typeof OpenSeadragon === "undefined") {
    if (!$("vendor-missing")) {
      setStatus("OpenSeadragon is missing: run `make viewer` and reload this page.", true);
    }
    return;
  }
  $("slides").addEventListener("change", (e) => {
    if (e.target.value) openSource("/api/slides/" + encodeURIComponent(e.target.value)).catch(
      (err) => setStatus(err.message, true));
  });
  $("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
  $("score").addEventListener("click", () => scoreCurrent());
  $("layer-heatmap").addEventListener("change", () => toggle("heatmap"));
  $("layer-cells").addEventListener("change", () => toggle("cells"));
  $("token-use").addEventListener("click", () => {
    state.token = $("token").value;
    setStatus("");
    loadSlides();
  });
  loadSlides();
}

start();
