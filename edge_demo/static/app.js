// Photo search page: talks only to this server's JSON API; builds the DOM with textContent so a
// photo name can never inject markup.
"use strict";

const PAGE = 60;
const state = { stats: null, last: null, libraryOffset: 0, seq: 0 };
const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`HTTP ${response.status}`);
  }
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function card(item, caption, onClick) {
  const fig = document.createElement("figure");
  fig.className = "card";
  fig.tabIndex = 0;
  fig.dataset.id = item.id;
  fig.dataset.name = item.name;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = item.name;
  img.src = `/image/${encodeURIComponent(item.id)}`;
  const cap = document.createElement("figcaption");
  for (const part of caption) cap.appendChild(part);
  fig.append(img, cap);
  fig.addEventListener("click", onClick);
  fig.addEventListener("keydown", (e) => { if (e.key === "Enter") onClick(); });
  return fig;
}

function span(text, cls) {
  const s = document.createElement("span");
  s.textContent = text;
  if (cls) s.className = cls;
  return s;
}

function granularitySpec() {
  const choice = $("granularity").value;
  if (choice !== "scales") return choice;
  const parts = [];
  for (const input of $("weights").querySelectorAll("input")) {
    parts.push(`${input.dataset.segment}=${input.value || 0}`);
  }
  return `scales:${parts.join(",")}`;
}

function searchParams() {
  const params = new URLSearchParams();
  params.set("k", $("k").value || "10");
  params.set("granularity", granularitySpec());
  return params;
}

async function runSearch(query) {
  state.last = query;
  const seq = ++state.seq;  // a slower earlier answer must not overwrite a newer one
  const params = searchParams();
  showError("");
  $("status").textContent = "Searching…";
  try {
    let answer;
    if (query.kind === "id") {
      params.set("id", query.id);
      answer = await getJSON(`/api/search?${params}`);
    } else {
      answer = await getJSON(`/api/search?${params}`, {
        method: "POST", body: query.file,
        headers: { "Content-Type": "application/octet-stream" },
      });
    }
    if (seq === state.seq) showResults(answer);
  } catch (e) {
    if (seq === state.seq) {
      clearResults();  // the previous answers are not answers for this query
      showError(e.message);
    }
  }
}

function clearResults() {
  $("results").replaceChildren();
  $("status").textContent = "";
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of answer.results) {
    grid.appendChild(card(r, [span(`#${r.rank} `), span(`d=${r.distance}`, "distance"),
                              document.createElement("br"), span(r.name)],
                          () => searchById(r)));
  }
  const t = answer.timings;
  const detail = Object.entries(t).map(([key, v]) => `${key.replace("_ms", "")} ${v.toFixed(2)} ms`);
  const what = answer.query ? `photo ${answer.query.name}` : "uploaded image";
  $("status").textContent = `${answer.results.length} results of ${answer.items} for ${what} ` +
    `(granularity ${answer.granularity}) in ${answer.query_ms.toFixed(2)} ms: ${detail.join(", ")}`;
  $("status").dataset.done = String(state.seq);
}

function searchById(item) {
  const preview = $("query-preview");
  preview.src = `/image/${encodeURIComponent(item.id)}`;
  preview.hidden = false;
  runSearch({ kind: "id", id: item.id });
}

function searchFile(file) {
  if (!file) return;
  const limit = state.stats ? state.stats.max_upload_bytes : Infinity;
  if (file.size > limit) {
    clearResults();
    showError(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(limit / 1e6).toFixed(1)} MB`);
    return;
  }
  const preview = $("query-preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  runSearch({ kind: "file", file });
}

function setupGranularity(stats) {
  const select = $("granularity");
  const labels = { fine: "fine (whole code)", coarse: "coarse" };
  for (const g of stats.granularities) {
    const option = document.createElement("option");
    option.value = g;
    option.textContent = labels[g] || g.replace("segment:", "segment ");
    select.appendChild(option);
  }
  if (stats.layout.segments.length > 1) {
    const option = document.createElement("option");
    option.value = "scales";
    option.textContent = "scales (weights)";
    select.appendChild(option);
    for (const s of stats.layout.segments) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "number"; input.min = "0"; input.step = "0.1"; input.value = "1";
      input.dataset.segment = s.name;
      input.addEventListener("change", rerun);
      label.append(span(`${s.name} (${s.bits} bits)`), input);
      $("weights").appendChild(label);
    }
  }
  select.addEventListener("change", () => {
    $("weights").hidden = select.value !== "scales";
    rerun();
  });
}

function rerun() {
  if (state.last) runSearch(state.last);
}

async function loadLibrary() {
  try {
    const page = await getJSON(`/api/items?offset=${state.libraryOffset}&limit=${PAGE}`);
    for (const item of page.items) {
      $("library").appendChild(card(item, [span(item.name)], () => searchById(item)));
    }
    state.libraryOffset += page.items.length;
    $("library-count").textContent = `(${page.total} photos)`;
    $("more").hidden = state.libraryOffset >= page.total;
  } catch (e) {
    showError(`Cannot list the photos: ${e.message}`);
  }
}

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
}

async function init() {
  setupDrop();
  $("k").addEventListener("change", rerun);
  $("more").addEventListener("click", loadLibrary);
  try {
    const stats = await getJSON("/api/stats");
    state.stats = stats;
    const segments = stats.layout.segments.map((s) => `${s.name} ${s.bits}`).join(" + ");
    $("stats").textContent = `${stats.items} photos · ${stats.bits} bits (${segments}) · model ` +
      `${stats.model.fingerprint} ${stats.model.variant} · index ${stats.index_file}`;
    setupGranularity(stats);
  } catch (e) {
    showError(`Cannot read the index stats: ${e.message}`);
  }
  loadLibrary();
}

document.addEventListener("DOMContentLoaded", init);
