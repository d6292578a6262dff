"use strict";
// the app root: this page is <root>compare
const root = location.pathname.replace(/compare\/?$/, "");
let pair = null;      // {pair_id, key}: the pair shown and the client key its vote is sent with
let votes = 0;

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
}

function setButtons(enabled) {
  document.querySelectorAll("#choices button").forEach(b => { b.disabled = !enabled; });
}

async function loadPair() {
  const error = document.getElementById("error");
  error.textContent = "";
  document.body.dataset.loaded = "false";
  setButtons(false);
  try {
    const resp = await fetch(root + "compare/pairs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 409) {  // nothing to compare now
      document.body.dataset.state = "idle";
      return;
    }
    if (!resp.ok) { throw new Error(body.detail ? JSON.stringify(body.detail) : "HTTP " + resp.status); }
    document.body.dataset.state = "voting";
    pair = { pair_id: body.pair_id, key: randomKey() };  // one key per pair: a double click is one vote
    document.getElementById("img-left").src = "data:image/png;base64," + body.left.data;
    document.getElementById("img-right").src = "data:image/png;base64," + body.right.data;
    document.body.dataset.pairId = body.pair_id;
    setButtons(true);
    document.body.dataset.loaded = "true";
  } catch (err) {
    error.textContent = "Could not load two faces: " + err.message;
  }
}

async function vote(choice) {
  if (!pair || document.body.dataset.loaded !== "true") { return; }
  const status = document.getElementById("status");
  const shown = pair;
  setButtons(false);
  status.className = "";
  status.textContent = "sending…";
  try {
    const resp = await fetch(root + "compare", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": shown.key },
      body: JSON.stringify({ pair_id: shown.pair_id, choice: choice }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { throw new Error(body.detail ? JSON.stringify(body.detail) : "HTTP " + resp.status); }
    votes += 1;
    status.className = "ok";
    status.dataset.voteId = body.vote_id;
    status.dataset.pairId = body.pair_id;
    status.dataset.choice = body.choice;
    status.textContent = "Saved (" + (choice === "cant_tell" ? "can't tell" : choice) + ") — thanks! Here is the next pair.";
    document.getElementById("count").textContent = votes + (votes === 1 ? " vote" : " votes") + " from you so far";
    await loadPair();
  } catch (err) {
    status.className = "err";
    status.textContent = "Could not save your vote: " + err.message;
    if (err.message.indexOf("expired") >= 0 || err.message.indexOf("stopped") >= 0) { await loadPair(); }
    else { setButtons(true); }
  }
}

document.querySelectorAll("#choices button").forEach(b => b.addEventListener("click", () => vote(b.dataset.choice)));
document.addEventListener("keydown", e => {
  const choice = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "cant_tell" }[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});
loadPair();
