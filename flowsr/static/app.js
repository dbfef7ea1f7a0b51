// flowsr serve: the page. Plain JavaScript, no libraries; talks to the JSON API in flowsr/serve.py.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {info: null, file: null, inputUrl: null, inputShown: false, job: null, polling: null, scale: 4,
               base: null, mode: "compare", split: 50};

// -- start: models and limits ---------------------------------------------------------------------
async function start() {
  try {
    const response = await fetch("/api/info");
    state.info = await response.json();
  } catch (error) {
    showMessage("Cannot reach the flowsr server: " + error.message);
    return;
  }
  for (const model of state.info.models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.kind}, x${model.scale})`;
    $("model").append(option);
  }
  $("steps").max = state.info.max_steps;
  $("drop-text").textContent = `or click to pick one (up to ${formatMB(state.info.max_upload_bytes)}, ` +
    `${formatMegapixels(state.info.max_pixels)})`;
  $("limits").textContent = `This server takes images up to ${formatMB(state.info.max_upload_bytes)} and ` +
    `${formatMegapixels(state.info.max_pixels)}, and jobs that fit in ${formatMB(state.info.job_memory_bytes)} ` +
    `of memory (${formatMB(state.info.max_memory_bytes)} in all, with the models); ` +
    "it refuses larger ones with a message.";
  modelChanged();
}

function currentModel() {
  return state.info.models.find((m) => m.name === $("model").value);
}

// Enable the knobs that apply: steps for flow teachers and MeanFlow, t for one-step students.
function modelChanged() {
  const model = currentModel();
  state.scale = model.scale;
  const kindText = {bicubic: "baseline, no network", regression: "one-step regression",
                    oftsr: "one-step OFTSR student", meanflow: "MeanFlow student, 1 or more steps",
                    flow: "flow teacher, several steps"}[model.kind] || model.kind;
  $("model-info").textContent = kindText;
  $("steps").value = model.default_steps;
  $("steps").disabled = !model.steps;
  $("steps-note").textContent = model.steps ? "" : "this model always takes one step";
  $("t").value = model.default_t;
  stepsChanged();
  layout();
}

function stepsChanged() {
  const model = currentModel();
  const oneStep = Number($("steps").value) === 1;
  const tApplies = model.t && (model.kind !== "meanflow" || oneStep);
  $("t").disabled = !tApplies;
  $("t-field").classList.toggle("off", !tApplies);
  $("t-note").textContent = tApplies ? "" : (model.t ? "t applies to one-step sampling" :
                                             "only distilled students (OFTSR, MeanFlow) have this knob");
  tChanged();
}

function tChanged() {
  $("t-value").textContent = Number($("t").value).toFixed(2);
}

// -- picking a file --------------------------------------------------------------------------------
function pick(file) {
  if (!file) return;
  hideMessage();
  if (state.info && file.size > state.info.max_upload_bytes) {
    showMessage(`${file.name}: file too large (${formatMB(file.size)} > ${formatMB(state.info.max_upload_bytes)})`);
    return;
  }
  state.file = file;
  forgetJob();
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  state.inputShown = false;
  state.base = null;
  for (const img of [$("in-img"), $("side-in")]) img.src = state.inputUrl;
  for (const img of [$("out-img"), $("side-out")]) img.removeAttribute("src");
  $("drop-title").textContent = file.name;
  $("drop-text").textContent = `${formatMB(file.size)}; drop or click for another`;
  $("run").disabled = false;
  $("download").hidden = true;
  $("stats").hidden = true;
  $("tag-right").textContent = "result";
  $("placeholder").hidden = true;
  showMode();
}

function inputLoaded() {
  const img = $("in-img");
  state.inputShown = true;
  showMode();
  if (!state.base) state.base = {width: img.naturalWidth * state.scale, height: img.naturalHeight * state.scale};
  layout();
}

// The browser cannot show the input (TIFF, or not an image at all): no broken picture, a note until the
// server answers (the result, or its error alone).
function inputFailed() {
  if (!state.file) return;
  state.inputShown = false;
  showMode();
  if (!$("message").hidden) return;  // the server has already refused it: its error alone
  $("placeholder").hidden = false;
  $("placeholder").textContent = "This browser cannot show this file (TIFF?); the result will still appear here.";
}

// -- running a job ---------------------------------------------------------------------------------
async function run() {
  if (!state.file) return;
  hideMessage();
  forgetJob();
  const model = currentModel();
  const params = new URLSearchParams({model: model.name, name: state.file.name, seed: $("seed").value || "0"});
  if (model.steps) params.set("steps", $("steps").value);
  if (!$("t").disabled) params.set("t", $("t").value);
  $("run").disabled = true;
  $("download").hidden = true;
  setProgress("uploading", null);
  let response, reply;
  try {
    response = await fetch("/api/jobs?" + params, {method: "POST", body: state.file,
                                                   headers: {"Content-Type": "application/octet-stream"}});
    reply = await response.json();
  } catch (error) {
    return failed("Upload failed: " + error.message);
  }
  if (!response.ok) return failed(reply.error || `HTTP ${response.status}`);
  state.job = reply.id;
  poll(reply.id);
}

async function poll(id) {
  if (state.job !== id) return;
  let status;
  try {
    const response = await fetch(`/api/jobs/${id}`);
    status = await response.json();
    if (!response.ok) return failed(status.error || `HTTP ${response.status}`);
  } catch (error) {
    return failed("Lost the server: " + error.message);
  }
  if (status.state === "queued") {
    const ahead = status.position - 1;
    setProgress(ahead ? `queued: ${ahead} job${ahead === 1 ? "" : "s"} ahead` : "queued: next to run", null);
  } else if (status.state === "running") {
    const tiles = status.tiles_total > 1 ? `, tile ${Math.min(status.tiles_done + 1, status.tiles_total)} of ${status.tiles_total}` : "";
    setProgress(`running${tiles}, ${status.elapsed.toFixed(1)} s`,
                status.tiles_total > 1 ? status.tiles_done / status.tiles_total : null);
  } else if (status.state === "error") {
    return failed(status.error);
  } else if (status.state === "done") {
    return done(status);
  }
  state.polling = setTimeout(() => poll(id), 250);
}

function done(status) {
  setProgress(null);
  $("run").disabled = false;
  const url = `/api/jobs/${status.id}/result`;
  const out = status.output, input = status.input;
  state.base = {width: out.width, height: out.height};
  for (const img of [$("out-img"), $("side-out")]) img.src = url;
  $("placeholder").hidden = true;
  showMode();
  const knob = status.t === null || status.t === undefined ? "" : `, t = ${status.t.toFixed(2)}`;
  const label = `${status.model}, ${status.steps} step${status.steps === 1 ? "" : "s"}${knob}`;
  $("tag-right").textContent = label;
  $("side-out-caption").textContent = "result: " + label;
  $("stat-time").textContent = `${status.seconds.toFixed(2)} s` + (status.waited > 0.05 ? ` (+${status.waited.toFixed(1)} s queued)` : "");
  $("stat-nfe").textContent = status.nfe;
  $("stat-input").textContent = `${input.width}×${input.height} ${input.mode}`;
  $("stat-output").textContent = `${out.width}×${out.height} ${out.mode}, ${formatMB(status.png_bytes)}`;
  $("stats").hidden = false;
  const link = $("download");
  link.href = url + "?download=1";
  link.download = `${stem(status.name)}_x${out.width / input.width}.png`;
  link.hidden = false;
  if (status.notes && status.notes.length) showMessage("Note: " + status.notes.join("; "), "note");
  layout();
}

function failed(message) {
  setProgress(null);
  $("run").disabled = !state.file;
  if (!state.inputShown) $("placeholder").hidden = true;  // only the error, not "cannot show this file"
  showMessage(message);
}

// Forget the previous job here and on the server, which then frees its result.
function forgetJob() {
  clearTimeout(state.polling);
  if (state.job) fetch(`/api/jobs/${state.job}`, {method: "DELETE"}).catch(() => {});
  state.job = null;
}

// -- the viewer: compare slider, side by side, zoom -----------------------------------------------
function setMode(mode) {
  state.mode = mode;
  $("mode-compare").classList.toggle("on", mode === "compare");
  $("mode-side").classList.toggle("on", mode === "side");
  showMode();
}

function showMode() {
  if (!state.file) return;
  const visible = state.inputShown || Boolean($("out-img").getAttribute("src"));  // never a broken picture
  $("compare").hidden = !visible || state.mode !== "compare";
  $("side").hidden = !visible || state.mode !== "side";
  for (const img of [$("in-img"), $("side-in")]) img.style.visibility = state.inputShown ? "" : "hidden";
  $("split-label").hidden = state.mode !== "compare";
  layout();
}

function layout() {
  if (!state.base) return;
  const zoom = Number($("zoom").value);
  const {width, height} = state.base;
  const views = state.mode === "compare" ? [[$("compare"), $("stage")]] :
    [[$("side-in-view"), $("side-in").parentElement], [$("side-out-view"), $("side-out").parentElement]];
  for (const [view, stage] of views) {
    const fit = Math.min((view.clientWidth - 2) / width, (view.clientHeight - 2) / height);
    const factor = zoom > 0 ? zoom : Math.max(fit, 0.01);
    stage.style.width = `${Math.round(width * factor)}px`;
    stage.style.height = `${Math.round(height * factor)}px`;
    stage.classList.toggle("pixels", factor >= 2);
  }
  const hasResult = Boolean($("out-img").getAttribute("src"));
  $("before").style.clipPath = hasResult ? `inset(0 ${100 - state.split}% 0 0)` : "none";
  $("divider").hidden = !hasResult;
  $("divider").style.left = `${state.split}%`;
  $("tag-right").hidden = !hasResult;
}

function setSplit(value) {
  state.split = Math.min(100, Math.max(0, value));
  $("split").value = state.split;
  layout();
}

function dragSplit(event) {
  const box = $("stage").getBoundingClientRect();
  setSplit(100 * (event.clientX - box.left) / box.width);
}

// -- small helpers ---------------------------------------------------------------------------------
function setProgress(text, fraction) {
  $("progress").hidden = text === null;
  if (text === null) return;
  $("progress-text").textContent = text;
  if (fraction === null) $("bar").removeAttribute("value"); else $("bar").value = fraction;
}

function showMessage(text, kind = "error") {
  $("message").textContent = text;
  $("message").className = kind;
  $("message").hidden = false;
}

function hideMessage() {
  $("message").hidden = true;
}

function formatMegapixels(pixels) {
  return `${Number((pixels / 1e6).toPrecision(3))} megapixels`;
}

function formatMB(bytes) {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(1)} GB`;
  return bytes >= 1 << 20 ? `${(bytes / 2 ** 20).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} kB`;
}

function stem(name) {
  const base = name.split(/[\\/]/).pop();
  const dot = base.lastIndexOf(".");
  return (dot > 0 ? base.slice(0, dot) : base) || "image";
}

// -- wiring ----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", () => pick($("file").files[0]));
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("hover"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("hover"); });
  }
  drop.addEventListener("drop", (event) => pick(event.dataTransfer.files[0]));
  $("model").addEventListener("change", modelChanged);
  $("steps").addEventListener("input", stepsChanged);
  $("t").addEventListener("input", tChanged);
  $("run").addEventListener("click", run);
  $("in-img").addEventListener("load", inputLoaded);
  $("in-img").addEventListener("error", inputFailed);
  $("mode-compare").addEventListener("click", () => setMode("compare"));
  $("mode-side").addEventListener("click", () => setMode("side"));
  $("zoom").addEventListener("change", layout);
  $("split").addEventListener("input", () => setSplit(Number($("split").value)));
  const stage = $("stage");
  stage.addEventListener("pointerdown", (event) => { stage.setPointerCapture(event.pointerId); dragSplit(event); });
  stage.addEventListener("pointermove", (event) => { if (stage.hasPointerCapture(event.pointerId)) dragSplit(event); });
  // side by side: the two panes scroll together
  const panes = [$("side-in-view"), $("side-out-view")];
  for (const [a, b] of [panes, [...panes].reverse()]) {
    a.addEventListener("scroll", () => {
      if (Math.abs(b.scrollLeft - a.scrollLeft) > 1 || Math.abs(b.scrollTop - a.scrollTop) > 1) {
        b.scrollLeft = a.scrollLeft; b.scrollTop = a.scrollTop;
      }
    });
  }
  window.addEventListener("resize", layout);
  start();
});
