// The page of `cgcnn-lab serve`: pick a model, give structure files, see the predictions; one structure drawn in
// 3-D (3Dmol.js) with its atoms coloured by their contribution and the neighbour graph the model reads.
// Everything a user gave is shown with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { files: [], models: {}, result: null, viewer: null, drawn: null, csvUrl: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message ? `error: ${message}` : "";
}

async function call(path, form) {
  // the API's answer, or an Error carrying its `detail` (the command line's message)
  const response = await fetch(path, form ? { method: "POST", body: form } : {});
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: said below */ }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function number(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
}

// ---------------------------------------------------------------- models and limits

function describeModel() {
  const m = state.models[$("model").value];
  if (!m) return;
  const what = m.task === "classification" ? `classes: ${m.classes.join(" / ")}`
    : `predicts ${m.targets.join(", ")}${m.unit ? ` in ${m.unit}` : ""}`;
  const test = m.test || {};
  const score = "accuracy" in test ? `; test accuracy ${number(test.accuracy)}`
    : "mae" in test ? `; test MAE ${number(test.mae)}${m.unit ? " " + m.unit : ""}` : "";
  const extra = [m.ensemble_members > 1 ? `ensemble of ${m.ensemble_members}` : "",
                 m.atom_readout ? "per-site contributions: yes" : "per-site contributions: no (no atom readout)"];
  $("model-info").textContent = [m.description, `${what}${score}`, ...extra].filter(Boolean).join(" · ");
}

async function start() {
  try {
    const [models, limits] = await Promise.all([call("/models"), call("/limits")]);
    for (const m of models) {
      state.models[m.name] = m;
      $("model").append(new Option(`${m.name} (${m.kind})`, m.name));
    }
    $("limits").textContent = `Accepted: ${limits.text}. Files are read in a temporary folder and not kept.`;
    describeModel();
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------- files

function addFiles(list) {
  for (const f of list) state.files.push(f);
  renderChosen();
}

function renderChosen() {
  const ul = $("chosen");
  ul.replaceChildren();
  state.files.forEach((f, k) => {
    const li = el("li", f.name);
    const x = el("button", "×");
    x.type = "button";
    x.title = `remove ${f.name}`;
    x.onclick = () => { state.files.splice(k, 1); renderChosen(); };
    li.append(x);
    ul.append(li);
  });
  $("predict").disabled = state.files.length === 0;
}

function pastedFile() {
  const text = $("paste").value;
  if (!text.trim()) return null;
  let format = $("paste-format").value;
  if (format === "auto") {
    const first = text.trim().split("\n")[0].trim();
    format = /^data_|_cell_length_a/m.test(text) ? "cif" : /^\d+$/.test(first) ? "extxyz" : "vasp";
  }
  const name = ($("paste-name").value.trim() || "pasted").replace(/\.(cif|vasp|poscar|xyz|extxyz)$/i, "");
  return new File([text], `${name}.${format}`, { type: "text/plain" });
}

// ---------------------------------------------------------------- predictions

function formWith(extra) {
  const form = new FormData();
  form.append("model", $("model").value);
  for (const f of state.files) form.append("files", f, f.name);
  for (const [k, v] of Object.entries(extra || {})) form.append(k, v);
  return form;
}

async function predict() {
  showError("");
  $("predict").disabled = true;
  $("predict").textContent = "Predicting…";
  try {
    state.result = await call("/predict", formWith());
    renderResults(state.result);
  } catch (err) {
    $("results").hidden = true;
    showError(err.message);
  } finally {
    $("predict").disabled = state.files.length === 0;
    $("predict").textContent = "Predict";
  }
}

function heading(column, result) {
  const unit = result.unit ? ` (${result.unit})` : "";
  if (column.startsWith("prediction_per_atom")) return `${column} (${result.unit ? result.unit + "/atom" : "per atom"})`;
  if (column.startsWith("prediction") || column.startsWith("target")) return column + unit;
  const p = /^p(\d+)$/.exec(column);
  if (p && result.classes) return `P(${result.classes[Number(p[1])]})`;
  return column;
}

function renderResults(result) {
  $("results").hidden = false;
  $("notes").textContent = result.notes.join(" — ");
  const warnings = $("warnings");
  warnings.replaceChildren(...result.warnings.map((w) => el("li", `warning: ${w}`)));
  const columns = result.columns.filter((c) => c !== "id");
  const shown = ["id", "file", ...(result.classes ? ["class"] : []), ...columns];
  const head = el("tr");
  for (const c of shown) head.append(el("th", heading(c, result)));
  head.append(el("th", ""));
  $("table").tHead.replaceChildren(head);
  const body = $("table").tBodies[0];
  body.replaceChildren();
  for (const row of result.rows) {
    const tr = el("tr");
    tr.dataset.id = row.id;
    for (const c of shown) tr.append(el("td", number(row[c]), ["id", "file", "class"].includes(c) ? "text" : ""));
    const button = el("button", "view 3-D");
    button.type = "button";
    button.onclick = () => view(row.id);
    const td = el("td");
    td.append(button);
    tr.append(td);
    body.append(tr);
  }
  if (state.csvUrl) URL.revokeObjectURL(state.csvUrl);
  state.csvUrl = URL.createObjectURL(new Blob([result.csv], { type: "text/csv" }));
  $("download").href = state.csvUrl;
  $("download").download = `predictions-${result.model}.csv`;
}

// ---------------------------------------------------------------- the 3-D view

const COLD = [33, 102, 172], MIDDLE = [247, 247, 247], HOT = [178, 24, 43];

function mix(a, b, t) {
  return a.map((x, k) => Math.round(x + (b[k] - x) * t));
}

function scale(values, middle) {
  // diverging colours: blue below the crystal's value (the pooled mean), red above
  const lo = Math.min(...values), hi = Math.max(...values);
  return (v) => {
    const rgb = v < middle ? mix(MIDDLE, COLD, lo < middle ? (middle - v) / (middle - lo) : 0)
      : mix(MIDDLE, HOT, hi > middle ? (v - middle) / (hi - middle) : 0);
    return `rgb(${rgb.join(",")})`;
  };
}

async function view(id) {
  showError("");
  for (const tr of $("table").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  try {
    state.drawn = await call("/view", formWith({ id }));
    $("view").hidden = false;
    draw();
    $("view").scrollIntoView({ behavior: "instant", block: "start" });
  } catch (err) {
    showError(err.message);
  }
}

function point(xyz) {
  return { x: xyz[0], y: xyz[1], z: xyz[2] };
}

function draw() {
  const d = state.drawn;
  if (!state.viewer) state.viewer = $3Dmol.createViewer($("viewer"), { backgroundColor: "white" });
  const v = state.viewer;
  v.clear();
  const model = v.addModel();
  model.addAtoms(d.atoms.map((a, k) => ({ elem: a.element, ...point(a.xyz), serial: k, bonds: [] })));
  const contributions = d.atoms.map((a) => a.contribution);
  const coloured = contributions.every((c) => typeof c === "number");
  const colour = coloured ? scale(contributions, d.crystal_value) : null;
  const sphere = { scale: 0.32 };
  if (coloured) sphere.colorfunc = (atom) => colour(contributions[atom.serial]);
  else sphere.colorscheme = "Jmol";
  v.setStyle({}, { sphere });
  if ($("show-bonds").checked) {
    const many = d.bonds.length > 1500;
    const images = new Map();
    for (const b of d.bonds) {
      const spec = { start: point(d.atoms[b.i].xyz), end: point(b.to), color: b.inside ? "#555" : "#999" };
      if (many) v.addLine(spec); else v.addCylinder({ ...spec, radius: b.inside ? 0.045 : 0.03 });
      if (!b.inside) images.set(b.to.join(","), b);
    }
    for (const b of images.values()) {
      v.addSphere({ center: point(b.to), radius: 0.22, color: coloured ? colour(contributions[b.j]) : "#bbb",
                    opacity: 0.45 });
    }
  }
  if ($("show-cell").checked) {
    const [a, b, c] = d.lattice;
    const at = (i, j, k) => ({ x: i * a[0] + j * b[0] + k * c[0], y: i * a[1] + j * b[1] + k * c[1],
                               z: i * a[2] + j * b[2] + k * c[2] });
    const corners = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]];
    for (const p of corners) for (const q of corners) {
      const differ = p.filter((x, k) => x !== q[k]).length;
      if (differ === 1 && p.join() < q.join()) v.addLine({ start: at(...p), end: at(...q), color: "#24425f" });
    }
  }
  if ($("show-labels").checked) {
    d.atoms.forEach((a) => v.addLabel(`${a.element}${a.site}`, { position: point(a.xyz), fontSize: 11,
      fontColor: "black", backgroundOpacity: 0.0, inFront: true }));
  }
  v.zoomTo();
  v.rotate(-25, "x");  // a little from above and aside: the cell reads as 3-D
  v.rotate(30, "y");
  v.render();
  describeView(d, coloured, colour);
}

function describeView(d, coloured, colour) {
  const row = d.prediction;
  const m = state.models[d.model] || {};
  const value = row.class !== undefined ? `${row.class} (P = ${number(row[`p${row.prediction}`])})`
    : `${number(row.prediction)}${m.unit ? " " + m.unit : ""}`
      + (row.prediction_std !== undefined ? ` ± ${number(row.prediction_std)}` : "");
  $("view-title").textContent = `${d.id} (${d.file}): ${value}`;
  const inside = d.bonds.filter((b) => b.inside).length;
  $("view-info").textContent = `${d.atoms.length} atoms; ${d.bonds.length} bonds of the model's graph `
    + `(each atom's ${d.graph.max_neighbors} nearest neighbours within ${d.graph.radius} Å; `
    + `${d.bonds.length - inside} reach a periodic image, drawn faint)`;
  $("view-note").textContent = d.note;
  $("legend").hidden = !coloured;
  if (coloured) {
    const values = d.atoms.map((a) => a.contribution);
    $("legend-min").textContent = number(Math.min(...values));
    $("legend-mid").textContent = `crystal ${number(d.crystal_value)}`;
    $("legend-max").textContent = number(Math.max(...values));
    $("legend-unit").textContent = `per-site contribution (${d.contribution_unit}): blue below the crystal's `
      + "pooled value, red above";
  }
  const head = el("tr");
  for (const c of ["site", "element", ...(coloured ? ["contribution"] : [])]) head.append(el("th", c));
  $("sites").tHead.replaceChildren(head);
  $("sites").tBodies[0].replaceChildren(...d.atoms.map((a) => {
    const tr = el("tr");
    tr.append(el("td", String(a.site)), el("td", a.element, "text"));
    if (coloured) {
      const td = el("td", number(a.contribution));
      td.style.background = colour(a.contribution);
      tr.append(td);
    }
    return tr;
  }));
}

// ---------------------------------------------------------------- wiring

window.addEventListener("DOMContentLoaded", () => {
  $("model").onchange = () => { describeModel(); $("results").hidden = true; $("view").hidden = true; };
  $("files").onchange = (e) => { addFiles(e.target.files); e.target.value = ""; };
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); };
  $("paste-add").onclick = () => {
    const f = pastedFile();
    if (f) { addFiles([f]); $("paste").value = ""; $("paste-box").open = false; }
  };
  $("predict").onclick = predict;
  for (const id of ["show-bonds", "show-cell", "show-labels"]) $(id).onchange = () => state.drawn && draw();
  start();
});
