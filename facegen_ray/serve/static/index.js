"use strict";
const NUM_FACES = 4;
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
}

async function sendFeedback(card, imageId, approved, key) {
  const status = card.querySelector(".status");
  card.querySelectorAll("button").forEach(b => { b.disabled = true; });
  status.className = "status";
  status.textContent = "sending…";
  try {
    const resp = await fetch(base + "feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify({ image_id: imageId, approved: approved }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { throw new Error(body.detail ? JSON.stringify(body.detail) : "HTTP " + resp.status); }
    status.className = "status ok";
    status.dataset.feedbackId = body.feedback_id;
    status.textContent = (approved ? "Approved" : "Rejected") + " — thanks! (feedback " + body.feedback_id.slice(0, 8) + ")";
  } catch (err) {
    status.className = "status err";
    status.textContent = "Could not save: " + err.message;
    card.querySelectorAll("button").forEach(b => { b.disabled = false; });
  }
}

function addCard(container, img, mime, controlText) {
  const card = document.createElement("div");
  card.className = "face";
  card.dataset.imageId = img.image_id;
  const key = randomKey();  // one client key per shown image: a double click stores one record
  const pic = document.createElement("img");
  pic.src = "data:" + mime + ";base64," + img.data;
  pic.alt = "generated face, seed " + img.seed;
  pic.title = "AI-generated (synthetic) face";
  const seed = document.createElement("div");
  seed.className = "seed";
  seed.textContent = "seed " + img.seed;
  const yes = document.createElement("button");
  yes.className = "approve"; yes.type = "button"; yes.textContent = "Approve";
  yes.addEventListener("click", () => sendFeedback(card, img.image_id, true, key));
  const no = document.createElement("button");
  no.className = "reject"; no.type = "button"; no.textContent = "Reject";
  no.addEventListener("click", () => sendFeedback(card, img.image_id, false, key));
  const status = document.createElement("div");
  status.className = "status";
  const control = document.createElement("div");
  control.className = "control";
  control.textContent = controlText || "";  // the edit / mix this face was made with (its record keeps it)
  card.append(pic, seed, control, yes, no, status);
  const label = document.createElement("div");
  label.className = "synthetic"; label.textContent = "AI-generated";
  card.insertBefore(label, seed);
  container.appendChild(card);
}

let currentSeed = null;  // the first seed of the faces shown: the controls re-render those faces

function controlsBody() {
  // edit: every slider that is not at 0; mix: when a seed is given (crossover 1..num_ws-1)
  const out = {};
  const edit = {};
  document.querySelectorAll("#sliders input.direction").forEach(el => {
    const v = parseFloat(el.value);
    if (v !== 0) { edit[el.dataset.name] = v; }
  });
  if (Object.keys(edit).length) { out.edit = edit; }
  const mixSeed = document.getElementById("mix-seed").value.trim();
  if (mixSeed !== "") {
    out.mix = { seed: parseInt(mixSeed, 10), crossover: parseInt(document.getElementById("mix-crossover").value, 10) };
  }
  return out;
}

function describeControls(c) {
  const parts = [];
  if (c.edit) { parts.push(Object.entries(c.edit).map(([k, v]) => k + " " + (v > 0 ? "+" : "") + v).join(", ")); }
  if (c.mix) { parts.push("mixed with seed " + c.mix.seed + " from layer " + c.mix.crossover); }
  return parts.join("; ");
}

async function setupControls() {
  // sliders for the directions the serving model has (GET /healthz lists them)
  try {
    const resp = await fetch(base + "healthz");
    const info = await resp.json();
    const sliders = document.getElementById("sliders");
    sliders.textContent = "";
    const max = info.max_edit_strength || 5;
    (info.directions || []).forEach(name => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "range"; input.className = "direction"; input.dataset.name = name;
      input.min = String(-max); input.max = String(max); input.step = "0.5"; input.value = "0";
      input.setAttribute("aria-label", name);
      const value = document.createElement("span");
      value.className = "value"; value.textContent = "0";
      input.addEventListener("input", () => { value.textContent = input.value; });
      input.addEventListener("change", () => loadFaces(true));
      label.append(name + " ", input, " ", value);
      sliders.appendChild(label);
    });
    if (!(info.directions || []).length) {
      sliders.textContent = "This model has no attribute directions (facegen directions makes them).";
    }
    const cross = document.getElementById("mix-crossover");
    if (info.num_ws) { cross.max = String(info.num_ws - 1); cross.value = String(Math.max(1, Math.floor(info.num_ws / 2))); }
    if (info.style_mixing === false) {  // trained without style mixing: the server refuses "mix" (422)
      const seed = document.getElementById("mix-seed");
      seed.disabled = true; cross.disabled = true; seed.value = "";
      seed.title = "This model was trained without style mixing.";
    }
    document.getElementById("controls").dataset.ready = "true";
  } catch (err) {
    document.getElementById("sliders").textContent = "Controls unavailable: " + err.message;
  }
}

async function loadFaces(sameFaces) {
  const container = document.getElementById("faces");
  const error = document.getElementById("error");
  error.textContent = "";
  document.body.dataset.loaded = "false";
  const controls = controlsBody();
  const request = Object.assign({ num_images: NUM_FACES, format: "png" }, controls);
  if (sameFaces === true && currentSeed !== null) { request.seed = currentSeed; }
  try {
    const resp = await fetch(base + "generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    const body = await resp.json();
    if (!resp.ok) { throw new Error(body.detail ? JSON.stringify(body.detail) : "HTTP " + resp.status); }
    document.getElementById("meta").dataset.modelVersion = body.model_version;
    container.textContent = "";
    currentSeed = body.images.length ? body.images[0].seed : null;
    body.images.forEach(img => addCard(container, img, "image/png", describeControls(controls)));
    document.body.dataset.loaded = "true";
  } catch (err) {
    error.textContent = "Could not generate faces: " + err.message;
  }
}

document.getElementById("more").addEventListener("click", () => loadFaces(false));
document.getElementById("apply").addEventListener("click", () => loadFaces(true));
document.getElementById("reset").addEventListener("click", () => {
  document.querySelectorAll("#sliders input.direction").forEach(el => { el.value = "0"; el.dispatchEvent(new Event("input")); });
  document.getElementById("mix-seed").value = "";
  loadFaces(true);
});
setupControls();
loadFaces(false);
