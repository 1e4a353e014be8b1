// Buildfleet dashboard: the admin token (kept in this browser only), state-changing buttons,
// the submit form and the live log. Everything else is server-rendered HTML.
"use strict";

const TOKEN_KEY = "buildfleet-admin-token";
const token = () => localStorage.getItem(TOKEN_KEY) || "";

function showMessage(text, isError) {
  const box = document.getElementById("message");
  if (!box) { if (isError) alert(text); return; }
  box.textContent = text;
  box.className = isError ? "message error" : "message";
  box.hidden = false;
}

async function api(method, path, body, headers) {
  const response = await fetch(path, {
    method,
    headers: Object.assign({ "Authorization": "Bearer " + token() }, headers || {}),
    body,
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error.code + ": " + data.error.message : response.status + " " + text;
    throw new Error(message);
  }
  return data;
}

function setupToken() {
  const input = document.getElementById("admin-token");
  if (!input) return;
  input.value = token();
  input.addEventListener("change", () => {
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    showMessage(input.value.trim() ? "Admin token saved in this browser." : "Admin token cleared.", false);
  });
}

function setupActions() {
  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      try {
        await api("POST", button.dataset.action);
        location.reload();
      } catch (e) {
        showMessage(e.message, true);
      }
    });
  });
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0")).join("");
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const parsePairs = (text) => Object.fromEntries(
      (text || "").split(/[\n,]/).map((s) => s.trim()).filter(Boolean).map((pair) => {
        const at = pair.indexOf("=");
        return at < 0 ? [pair, ""] : [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
      }));
    // Annotations: one key=value per line (a value may hold commas and further '='). A line
    // without '=' becomes an empty value, which the server refuses naming the key.
    const parseLines = (text) => Object.fromEntries(
      (text || "").split(/\r?\n/).map((s) => s.trim()).filter(Boolean).map((line) => {
        const at = line.indexOf("=");
        return at < 0 ? [line, ""] : [line.slice(0, at).trim(), line.slice(at + 1).trim()];
      }));
    const job = {
      recipe: data.get("recipe"),
      mode: data.get("mode"),
      priority: Number(data.get("priority") || 0),
      timeout_secs: Number(data.get("timeout_secs") || 3600),
      parameters: parsePairs(data.get("parameters")),
      labels: parsePairs(data.get("labels")),
      annotations: parseLines(data.get("annotations")),
    };
    try {
      const file = data.get("archive");
      if (file && file.size > 0) {
        const uploaded = await api("POST", "/api/v1/sources", file, { "Content-Type": "application/octet-stream" });
        job.source_sha256 = uploaded.sha256;
      } else {
        job.source_url = data.get("source_url");
        job.source_sha256 = (data.get("source_sha256") || "").trim().toLowerCase();
      }
      const created = await api("POST", "/api/v1/jobs", JSON.stringify(job), { "Content-Type": "application/json" });
      location.href = "/jobs/" + created.id;
    } catch (e) {
      showMessage(e.message, true);
    }
  });
}

function appendRecord(pre, record) {
  const span = document.createElement("span");
  if (record.stage) {
    span.className = "stage";
    span.textContent = "--- " + record.stage.replace(/_/g, " ") + "\n";
  } else {
    span.className = record.stream || "stdout";
    span.textContent = (record.line || "") + "\n";
  }
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  pre.appendChild(span);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

const TERMINAL = ["succeeded", "failed", "cancelled", "timed_out"];

function showState(badge, state) {
  if (!badge || badge.textContent === state) return;
  badge.textContent = state;
  badge.className = "state state-" + state;
}

// The log and the job's state are pushed (server-sent events). EventSource reconnects by
// itself with Last-Event-ID, so lines are neither lost nor repeated; both streams are closed
// after their `end`, which would otherwise make EventSource reconnect.
function setupLiveLog() {
  const pre = document.getElementById("live-log");
  if (!pre) return;
  const status = document.getElementById("log-status");
  const badge = document.getElementById("job-state");
  const source = new EventSource(pre.dataset.stream);
  let lines = 0;
  let ended = false;
  const say = (text) => { if (status) status.textContent = text; };
  source.onmessage = (event) => {
    try { appendRecord(pre, JSON.parse(event.data)); lines += 1; } catch (_) { return; }
    say(lines + " lines, live");
  };
  source.addEventListener("attempt", (event) => {
    const attempt = JSON.parse(event.data).attempt;
    appendRecord(pre, { stage: "attempt " + attempt });
  });
  source.addEventListener("end", (event) => {
    ended = true;
    source.close();
    const end = JSON.parse(event.data);
    say(lines + " lines, " + end.outcome.replace(/_/g, " "));
  });
  source.onerror = () => { if (!ended) say(lines + " lines (reconnecting…)"); };

  if (!badge) return;
  const states = new EventSource("/api/v1/jobs/" + badge.dataset.job + "/events");
  states.addEventListener("state", (event) => showState(badge, JSON.parse(event.data).state));
  states.addEventListener("end", (event) => {
    states.close();
    const wasRunning = !TERMINAL.includes(badge.textContent);
    showState(badge, JSON.parse(event.data).outcome);
    // Artifacts and the attempt table are server-rendered: show the final page.
    if (wasRunning) setTimeout(() => location.reload(), 1500);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupActions();
  setupSubmit();
  setupLiveLog();
});
