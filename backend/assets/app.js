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
    const job = {
      recipe: data.get("recipe"),
      mode: data.get("mode"),
      priority: Number(data.get("priority") || 0),
      timeout_secs: Number(data.get("timeout_secs") || 3600),
      parameters: parsePairs(data.get("parameters")),
      labels: parsePairs(data.get("labels")),
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

function setupLiveLog() {
  const pre = document.getElementById("live-log");
  if (!pre) return;
  const status = document.getElementById("log-status");
  const source = new EventSource(pre.dataset.stream);
  let lines = 0;
  source.onmessage = (event) => {
    try { appendRecord(pre, JSON.parse(event.data)); lines += 1; } catch (_) { /* keepalive */ }
    if (status) status.textContent = lines + " lines, live";
  };
  source.onerror = () => { if (status) status.textContent = lines + " lines (reconnecting…)"; };
  // The job's state is refreshed so the page shows the end of a build without a reload.
  const stateBadge = document.getElementById("job-state");
  if (stateBadge) {
    const timer = setInterval(async () => {
      try {
        const job = await (await fetch("/api/v1/jobs/" + stateBadge.dataset.job)).json();
        if (job.state !== stateBadge.textContent) {
          stateBadge.textContent = job.state;
          stateBadge.className = "state state-" + job.state;
          if (["succeeded", "failed", "cancelled", "timed_out"].includes(job.state)) {
            clearInterval(timer);
            setTimeout(() => location.reload(), 1500);
          }
        }
      } catch (_) { /* retry on the next tick */ }
    }, 2000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupActions();
  setupSubmit();
  setupLiveLog();
});
