// Buildfleet dashboard: the admin token (kept in this browser only), the actions that change
// things (through the token-checked API), the forms, and the live tail of a job's log.
// Everything else, a finished job's log included, is server-rendered HTML.
"use strict";

const TOKEN_KEY = "buildfleet-admin-token";
const token = () => localStorage.getItem(TOKEN_KEY) || "";
// The live tail's streams, closed when its log pane is replaced.
let tail = null;

function showMessage(text, isError) {
  const box = document.getElementById("message");
  if (!box) { if (isError) alert(text); return; }
  box.textContent = text;
  box.className = isError ? "message error" : "message";
  box.setAttribute("role", isError ? "alert" : "status");
  box.hidden = false;
}

// After a change, the page's content is fetched again and swapped in, keeping the elements
// named in `keep` (a live log goes on where it is); no reload, so nothing else is lost.
async function refreshMain(keep) {
  let fresh = null;
  try {
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (response.ok) {
      fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
    }
  } catch (_) {
    fresh = null;
  }
  const main = document.querySelector("main");
  if (!fresh || !main) { location.reload(); return; }
  // Kept elements never leave the document (that would lose the log's scroll position):
  // everything else goes, and the fresh nodes are placed around them in order.
  const kept = new Set(keep.map((id) => document.getElementById(id)).filter((el) => el && el.parentNode === main));
  for (const child of Array.from(main.childNodes)) {
    if (!kept.has(child)) child.remove();
  }
  let cursor = null;
  for (const node of Array.from(fresh.childNodes)) {
    const own = node.id && kept.has(document.getElementById(node.id)) ? document.getElementById(node.id) : null;
    if (own) {
      cursor = own;
      continue;
    }
    if (cursor) cursor.after(node); else main.prepend(node);
    cursor = node;
  }
  const keepsLog = keep.includes("log");
  if (!keepsLog && tail) { tail.close(); tail = null; }
  setupPage(main);
  if (!keepsLog) startLog();
}

// An API error beside the form or button it is about (`box`, a `.form-error`), else in the
// page's message box.
function showError(box, text) {
  if (!box) { showMessage(text, true); return; }
  box.textContent = text;
  box.hidden = false;
}

function clearError(box) {
  if (!box) return;
  box.hidden = true;
  box.textContent = "";
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

const postJson = (path, value) =>
  api("POST", path, JSON.stringify(value), { "Content-Type": "application/json" });

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// `k=v, k=v` (or one per line) into an object; a part without `=` gets an empty value,
// which the server refuses naming the key.
const parsePairs = (text, separator) => Object.fromEntries(
  (text || "").split(separator || /[\n,]/).map((s) => s.trim()).filter(Boolean).map((pair) => {
    const at = pair.indexOf("=");
    return at < 0 ? [pair, ""] : [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
  }));

function setupToken() {
  const input = document.getElementById("admin-token");
  if (!input) return;
  input.value = token();
  input.addEventListener("change", async () => {
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    showMessage(input.value.trim() ? "Admin token saved in this browser." : "Admin token cleared.", false);
    loadEnrolmentTokens();
    // The pages are rendered on the server: it learns the token through the session cookie,
    // and pages loaded from now on show the private projects' jobs the token may see. A page
    // that is all about the token (the tokens page) is rendered again at once.
    const synced = await syncSession();
    if (synced && document.querySelector("[data-token-page]")) await refreshMain(["message"]);
  });
  if (token() && !sessionStorage.getItem(SESSION_SYNCED)) syncSession();
}

const SESSION_SYNCED = "buildfleet-session-synced";

// Sets (or, without a token, clears) the HttpOnly session cookie; answers whether it did.
async function syncSession() {
  try {
    const response = await fetch("/session", {
      method: "POST",
      headers: token() ? { "Authorization": "Bearer " + token() } : {},
      credentials: "same-origin",
    });
    if (!response.ok) {
      showMessage("This token is not accepted: pages show public projects only.", true);
      return false;
    }
    sessionStorage.setItem(SESSION_SYNCED, "1");
    return true;
  } catch (e) {
    return false;
  }
}

// Buttons with `data-action` call the API (POST unless `data-method` says otherwise). One
// with `data-confirm` asks for a second press first: no dialog, so keyboards and tests reach it.
// One with `data-error-box` shows a refusal in that element, beside it.
function setupActions(root) {
  root.querySelectorAll("button[data-action]").forEach((button) => {
    let disarm = null;
    const box = button.dataset.errorBox ? document.getElementById(button.dataset.errorBox) : null;
    button.addEventListener("click", async () => {
      clearError(box);
      if (button.dataset.confirm && !button.classList.contains("armed")) {
        button.dataset.label = button.textContent;
        button.textContent = button.dataset.confirm;
        button.classList.add("armed");
        disarm = setTimeout(() => {
          button.classList.remove("armed");
          button.textContent = button.dataset.label;
        }, 5000);
        return;
      }
      clearTimeout(disarm);
      button.disabled = true;
      try {
        await api(button.dataset.method || "POST", button.dataset.action);
        await refreshMain([]);
        showMessage((button.dataset.label || button.textContent) + ": done.", false);
      } catch (e) {
        button.disabled = false;
        if (button.dataset.label) {
          button.classList.remove("armed");
          button.textContent = button.dataset.label;
        }
        showError(box, e.message);
      }
    });
  });
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const job = {
      recipe: data.get("recipe"),
      mode: data.get("mode"),
      priority: Number(data.get("priority") || 0),
      timeout_secs: Number(data.get("timeout_secs") || 3600),
      max_attempts: Number(data.get("max_attempts") || 3),
      parameters: parsePairs(data.get("parameters")),
      labels: parsePairs(data.get("labels")),
      // One key=value per line: a value may hold commas and further '='.
      annotations: parsePairs(data.get("annotations"), /\r?\n/),
    };
    if (data.get("project")) job.project = data.get("project");
    const crate = (data.get("crate") || "").trim();
    const file = data.get("archive");
    const hasFile = file && file.size > 0;
    const url = (data.get("source_url") || "").trim();
    try {
      job.retry = retryPolicy(data);
      if (crate && (hasFile || url)) {
        throw new Error("Give a crate or a source archive, not both.");
      }
      if (crate) {
        // The server resolves name@version against its registry.
        job.crate = crate;
      } else if (hasFile) {
        const uploaded = await api("POST", "/api/v1/sources", file, { "Content-Type": "application/octet-stream" });
        job.source_sha256 = uploaded.sha256;
      } else if (url) {
        job.source_url = url;
        job.source_sha256 = (data.get("source_sha256") || "").trim().toLowerCase();
      } else {
        throw new Error("Give a crate (name@version), a source archive or a source URL.");
      }
      const created = await postJson("/api/v1/jobs", job);
      location.href = "/jobs/" + created.id;
    } catch (e) {
      showMessage(e.message, true);
    }
  });
}

// The submit form's "Retry" fields as the API's `retry` policy (back-offs in seconds there,
// milliseconds here); the server checks the bounds and says which one is wrong.
function retryPolicy(data) {
  const codes = (data.get("retry_exit_codes") || "").trim();
  let exitCodes = [];
  if (codes.toLowerCase() === "any") {
    exitCodes = "any";
  } else if (codes) {
    exitCodes = codes.split(",").map((c) => c.trim()).filter(Boolean).map((c) => {
      if (!/^-?[0-9]+$/.test(c)) throw new Error("Retry exit codes: " + JSON.stringify(c) + " is not a number (give numbers such as 1, 137, or any).");
      return Number(c);
    });
  }
  const secs = (name, fallback) => {
    const raw = (data.get(name) || "").trim();
    return raw === "" ? fallback : Math.round(Number(raw) * 1000);
  };
  return {
    lost_builder: data.get("retry_lost_builder") !== null,
    infrastructure: data.get("retry_infrastructure") !== null,
    exit_codes: exitCodes,
    backoff_initial_ms: secs("retry_backoff_initial_secs", 10000),
    backoff_max_ms: secs("retry_backoff_max_secs", 300000),
  };
}

function setupAdmit() {
  const form = document.getElementById("admit-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const builder = await postJson("/api/v1/builders", {
        name: (data.get("name") || "").trim(),
        public_key: (data.get("public_key") || "").trim(),
        labels: parsePairs(data.get("labels")),
      });
      await refreshMain([]);
      showMessage("Admitted " + builder.name + " (" + builder.fingerprint + ").", false);
    } catch (e) {
      showMessage(e.message, true);
    }
  });
}

// Enrolment tokens are listed by the API to admins only, so the list comes from there.
function setupEnrolment() {
  const form = document.getElementById("enrolment-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const created = await postJson("/api/v1/enrolment-tokens", {
        max_uses: Number(data.get("max_uses") || 1),
        ttl_secs: Number(data.get("ttl_secs") || 3600),
        labels: parsePairs(data.get("labels")),
      });
      document.getElementById("issued-secret").textContent = created.token;
      document.getElementById("issued-token").hidden = false;
      showMessage("Issued enrolment token " + created.id + ".", false);
      await loadEnrolmentTokens();
    } catch (e) {
      showMessage(e.message, true);
    }
  });
  loadEnrolmentTokens();
}

// The projects page (admin): create a project, change one's weight or visibility.
function setupProjects() {
  const create = document.getElementById("project-create-form");
  if (create) {
    create.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(create);
      try {
        const project = await postJson("/api/v1/projects", {
          name: (data.get("name") || "").trim(),
          public: data.get("public") !== null,
          weight: Number(data.get("weight") || 1),
        });
        await refreshMain([]);
        showMessage("Created project " + project.name + ".", false);
      } catch (e) {
        showMessage(e.message, true);
      }
    });
  }
  const update = document.getElementById("project-update-form");
  if (update) {
    update.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(update);
      const changes = {};
      if ((data.get("weight") || "").trim()) changes.weight = Number(data.get("weight"));
      if (data.get("public")) changes.public = data.get("public") === "true";
      try {
        if (Object.keys(changes).length === 0) throw new Error("Give a new weight or a visibility to change.");
        const project = await api("PATCH", "/api/v1/projects/" + data.get("project"), JSON.stringify(changes), { "Content-Type": "application/json" });
        await refreshMain([]);
        showMessage("Changed " + project.name + ": weight " + project.weight + ", " + (project.public ? "public" : "private") + ".", false);
      } catch (e) {
        showMessage(e.message, true);
      }
    });
  }
}

// The tokens page: create a token (its secret shown once, with a copy button); the list is
// rendered on the server and swapped in afresh, the secret's box kept.
function setupTokens() {
  const form = document.getElementById("token-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {
      scope: data.get("scope"),
      description: (data.get("description") || "").trim(),
    };
    if (data.get("project")) body.project = data.get("project");
    if (data.get("expires_in_secs")) body.expires_in_secs = Number(data.get("expires_in_secs"));
    try {
      const created = await postJson("/api/v1/tokens", body);
      await refreshMain(["created-token"]);
      document.getElementById("created-secret").textContent = created.secret;
      document.getElementById("created-token").hidden = false;
      showMessage("Created token #" + created.id + " (" + created.scope + (created.project ? " of " + created.project : "") + ").", false);
    } catch (e) {
      showMessage(e.message, true);
    }
  });
  setupCopy("copy-secret", "created-secret", "token");
}

// A copy button for a secret shown once (`what`: "token", "secret"). The box it sits in is
// kept across refreshes, so the button is set up once.
function setupCopy(buttonId, secretId, what) {
  const copy = document.getElementById(buttonId);
  if (!copy || copy.dataset.ready) return;
  copy.dataset.ready = "1";
  copy.addEventListener("click", async () => {
    const shown = document.getElementById(secretId);
    try {
      await navigator.clipboard.writeText(shown.textContent);
      showMessage(what.charAt(0).toUpperCase() + what.slice(1) + " copied.", false);
    } catch (_) {
      // No clipboard (plain http, an old browser): select it for a manual copy.
      const range = document.createRange();
      range.selectNodeContents(shown);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      showMessage("Select and copy the " + what + " shown (the clipboard is not available here).", false);
    }
  });
}

// Retention limits as the server's pages word them.
function describeLimits(limits) {
  const parts = [];
  if (limits.max_age_days !== null && limits.max_age_days !== undefined) parts.push(limits.max_age_days + " days");
  if (limits.keep_last !== null && limits.keep_last !== undefined) parts.push("the last " + limits.keep_last + " jobs");
  return parts.length ? parts.join(", at most ") : "kept";
}

// A project's webhooks page (its admin): the retention policy, replaced as a whole (a field
// that says none, or is empty, has no limit).
function setupRetention() {
  const form = document.getElementById("retention-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = form.querySelector(".form-error");
    clearError(box);
    const data = new FormData(form);
    const limit = (name, what) => {
      const raw = (data.get(name) || "").trim();
      if (raw === "" || raw.toLowerCase() === "none") return null;
      if (!/^[0-9]+$/.test(raw)) throw new Error(what + ": " + JSON.stringify(raw) + " is not a whole number (or none for no limit).");
      return Number(raw);
    };
    try {
      const policy = {
        artifacts: {
          max_age_days: limit("artifacts_max_age_days", "Artifacts' max age"),
          keep_last: limit("artifacts_keep_last", "Artifacts of the last jobs"),
        },
        logs: {
          max_age_days: limit("logs_max_age_days", "Logs' max age"),
          keep_last: limit("logs_keep_last", "Logs of the last jobs"),
        },
      };
      const saved = await api("PUT", "/api/v1/projects/" + form.dataset.project + "/retention", JSON.stringify(policy), { "Content-Type": "application/json" });
      await refreshMain([]);
      showMessage("Retention of " + saved.project + " saved: artifacts " + describeLimits(saved.artifacts) + "; logs " + describeLimits(saved.logs) + ".", false);
    } catch (e) {
      showError(box, e.message);
    }
  });
}

// A project's webhooks page (its admin): add a webhook; its secret is shown once.
function setupWebhooks() {
  const form = document.getElementById("webhook-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = form.querySelector(".form-error");
    clearError(box);
    const data = new FormData(form);
    const body = { url: (data.get("url") || "").trim(), events: data.getAll("events") };
    const secret = (data.get("secret") || "").trim();
    if (secret) body.secret = secret;
    try {
      const created = await postJson("/api/v1/projects/" + form.dataset.project + "/webhooks", body);
      await refreshMain(["created-webhook"]);
      document.getElementById("webhook-secret").textContent = created.secret;
      document.getElementById("created-webhook").hidden = false;
      showMessage("Added webhook #" + created.id + " for " + created.events.join(", ") + ".", false);
    } catch (e) {
      showError(box, e.message);
    }
  });
  setupCopy("copy-webhook-secret", "webhook-secret", "secret");
}

function utc(ms) {
  const iso = new Date(ms).toISOString();
  return iso.slice(0, 10) + " " + iso.slice(11, 19) + " UTC";
}

function tokenStatus(t) {
  if (t.revoked_at) return "revoked";
  if (t.uses >= t.max_uses) return "used up";
  if (!t.usable) return "expired";
  return "usable";
}

async function loadEnrolmentTokens() {
  const box = document.getElementById("enrolment-tokens");
  if (!box) return;
  if (!token()) {
    box.replaceChildren(element("p", "muted", "Enter the admin token (top right) to list enrolment tokens."));
    return;
  }
  let list;
  try {
    list = (await api("GET", "/api/v1/enrolment-tokens")).enrolment_tokens;
  } catch (e) {
    box.replaceChildren(element("p", "muted", "Enrolment tokens could not be listed: " + e.message));
    return;
  }
  if (list.length === 0) {
    box.replaceChildren(element("p", "muted", "No enrolment tokens issued."));
    return;
  }
  const table = element("table", "stack tokens");
  const head = table.createTHead().insertRow();
  for (const title of ["Token", "Uses", "Expires", "Labels", "Status", "Action"]) head.appendChild(element("th", "", title));
  const body = table.createTBody();
  for (const t of list) {
    const row = body.insertRow();
    row.id = "enrolment-token-" + t.id;
    const cell = (label, text, className) => {
      const td = element("td", className || "", text);
      td.dataset.label = label;
      row.appendChild(td);
      return td;
    };
    cell("Token", "#" + t.id);
    cell("Uses", t.uses + " of " + t.max_uses);
    cell("Expires", utc(t.expires_at));
    cell("Labels", Object.entries(t.labels || {}).map(([k, v]) => k + "=" + v).join(", ") || "none", "mono");
    cell("Status", tokenStatus(t));
    const action = cell("Action");
    if (!t.revoked_at) {
      const revoke = element("button", "danger", "Revoke");
      revoke.type = "button";
      revoke.setAttribute("aria-label", "Revoke enrolment token " + t.id);
      revoke.addEventListener("click", async () => {
        revoke.disabled = true;
        try {
          await api("DELETE", "/api/v1/enrolment-tokens/" + t.id);
          showMessage("Revoked enrolment token " + t.id + ".", false);
          await loadEnrolmentTokens();
        } catch (e) {
          revoke.disabled = false;
          showMessage(e.message, true);
        }
      });
      action.appendChild(revoke);
    }
  }
  const wrap = element("div", "table-wrap");
  wrap.appendChild(table);
  box.replaceChildren(wrap);
}

// ---- the job page's log: rendered like job_log.rs renders it ----

const fold = (text) => text.replace(/[A-Z]/g, (c) => c.toLowerCase());
const severity = (line) => {
  const found = /^\s*(error|warning)[:[]/i.exec(line);
  return found ? found[1].toLowerCase() : null;
};
const timeOfDay = (ms) => new Date(ms).toISOString().slice(11, 23);

function recordElement(record) {
  let kind;
  let text;
  if (record.stage) {
    kind = "stage";
    text = "--- " + record.stage.replace(/_/g, " ");
  } else {
    const stream = record.stream === "stderr" ? "err" : record.stream === "system" ? "system" : "out";
    text = record.line || "";
    const level = severity(text);
    kind = level ? stream + " lvl-" + level : stream;
  }
  const rec = element("span", "rec " + kind);
  if (kind.startsWith("err")) rec.title = "standard error";
  rec.appendChild(element("span", "ln", String(record.seq)));
  const ts = element("span", "ts", timeOfDay(record.ts));
  ts.title = utc(record.ts);
  rec.appendChild(ts);
  rec.appendChild(element("span", "tx", text));
  return rec;
}

// Shows `rec` if its text holds `query` (ASCII case ignored, as the server searches), with
// each match marked; stage lines match nothing.
function applySearch(rec, query) {
  const tx = rec.querySelector(".tx");
  if (!tx) return;
  const text = tx.textContent;
  if (!query) {
    rec.hidden = false;
    if (tx.querySelector("mark")) tx.textContent = text;
    return;
  }
  const hay = fold(text);
  const needle = fold(query);
  let at = rec.classList.contains("stage") ? -1 : hay.indexOf(needle);
  rec.hidden = at < 0;
  if (at < 0) return;
  const parts = [];
  let from = 0;
  while (at >= 0) {
    parts.push(document.createTextNode(text.slice(from, at)));
    parts.push(element("mark", "", text.slice(at, at + needle.length)));
    from = at + needle.length;
    at = hay.indexOf(needle, from);
  }
  parts.push(document.createTextNode(text.slice(from)));
  tx.replaceChildren(...parts);
}

function setupLog() {
  const pre = document.getElementById("live-log");
  if (!pre) return null;
  const search = document.getElementById("log-search");
  const follow = document.getElementById("log-follow");
  const status = document.getElementById("log-status");
  const log = {
    pre,
    query: () => (search ? search.value.trim() : ""),
    lines: () => pre.querySelectorAll(".rec:not(.stage)").length,
    say: (suffix) => {
      if (!status) return;
      const query = log.query();
      const lines = log.lines();
      const badge = document.getElementById("job-state");
      if (lines === 0 && badge && badge.textContent === "queued") {
        status.textContent = "waiting for a builder";
        return;
      }
      let text = lines === 1 ? "1 line" : lines + " lines";
      if (query) text += ", " + pre.querySelectorAll(".rec:not([hidden]):not(.stage)").length + " matching";
      status.textContent = text + " · " + suffix;
    },
    atEnd: () => {
      if (follow && follow.checked) pre.scrollTop = pre.scrollHeight;
    },
    append: (record) => {
      const rec = recordElement(record);
      applySearch(rec, log.query());
      pre.appendChild(rec);
      log.atEnd();
    },
  };
  if (search) {
    search.addEventListener("input", () => {
      pre.querySelectorAll(".rec").forEach((rec) => applySearch(rec, log.query()));
      if (log.suffix) log.say(log.suffix);
      log.atEnd();
    });
    // A live log is searched in place; a finished one goes to the server, which searches
    // what it has stored (the form works without script too).
    search.form.addEventListener("submit", (event) => {
      if (pre.dataset.stream && pre.dataset.streamState !== "ended") event.preventDefault();
    });
  }
  if (follow) {
    follow.addEventListener("change", log.atEnd);
    // Scrolling up to read stops following (scrolling back down does not restart it); a
    // scroll the reader did not make (a resize, a search) does not.
    let reading = 0;
    const byReader = () => { reading = Date.now(); };
    for (const kind of ["wheel", "touchmove", "mousedown", "keydown"]) {
      pre.addEventListener(kind, byReader, { passive: true });
    }
    pre.addEventListener("scroll", () => {
      const away = pre.scrollHeight - pre.scrollTop - pre.clientHeight > 40;
      if (follow.checked && away && Date.now() - reading < 1000) follow.checked = false;
    });
    window.addEventListener("resize", log.atEnd);
  }
  return log;
}

// The live tail, while the job is active: records after what the page shows, then `end`.
// EventSource reconnects by itself with Last-Event-ID, so lines are neither lost nor repeated;
// both streams are closed after their `end`, which would otherwise make it reconnect.
function startLiveTail(log) {
  const pre = log.pre;
  if (!pre.dataset.stream) return;
  pre.dataset.streamState = "open";
  const toggle = document.getElementById("log-follow-toggle");
  if (toggle) toggle.hidden = false;
  log.suffix = "live";
  log.say(log.suffix);
  log.atEnd();
  const source = new EventSource(pre.dataset.stream);
  const states = new EventSource("/api/v1/jobs/" + pre.dataset.job + "/events");
  tail = { close: () => { source.close(); states.close(); } };
  let ended = false;
  source.onmessage = (event) => {
    try { log.append(JSON.parse(event.data)); } catch (_) { return; }
    log.say(log.suffix);
  };
  source.addEventListener("attempt", (event) => {
    log.append({ seq: 0, ts: Date.now(), stage: "attempt " + JSON.parse(event.data).attempt });
  });
  source.addEventListener("end", (event) => {
    ended = true;
    source.close();
    pre.dataset.streamState = "ended";
    log.suffix = JSON.parse(event.data).outcome.replace(/_/g, " ");
    log.say(log.suffix);
    if (toggle) toggle.remove();
  });
  source.onerror = () => { if (!ended) log.say("reconnecting…"); };

  // The head, the artifacts and the rest follow the job's state, swapped in place.
  let shown = (document.getElementById("job-state") || {}).textContent;
  states.addEventListener("state", (event) => {
    const state = JSON.parse(event.data).state;
    if (state !== shown) { shown = state; refreshMain(["message", "log"]); }
  });
  states.addEventListener("end", () => {
    states.close();
    refreshMain(["message", "log"]);
  });
}

function startLog() {
  const log = setupLog();
  if (log) startLiveTail(log);
}

// A builder card's projects form (admin): the whole list is PUT; an empty one makes the
// builder shared by every project again.
function setupBuilderProjects(root) {
  root.querySelectorAll("form.builder-projects").forEach((form) => {
    const box = form.querySelector(".form-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError(box);
      const projects = String(new FormData(form).get("projects") || "")
        .split(",").map((p) => p.trim()).filter((p) => p);
      try {
        await api("PUT", "/api/v1/builders/" + form.dataset.builder + "/projects",
          JSON.stringify({ projects }), { "Content-Type": "application/json" });
        await refreshMain([]);
        showMessage(projects.length ? "Now serves only " + projects.join(", ") + "." : "Now serves every project.", false);
      } catch (e) {
        showError(box, e.message);
      }
    });
  });
}

function setupPage(root) {
  setupActions(root);
  setupBuilderProjects(root);
  setupSubmit();
  setupAdmit();
  setupEnrolment();
  setupProjects();
  setupTokens();
  setupRetention();
  setupWebhooks();
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupPage(document);
  // Streams open after the page has loaded, so the page finishes loading (a headless
  // browser's dump or screenshot waits for that) and shows the stored log at once.
  const start = () => setTimeout(startLog, 0);
  if (document.readyState === "complete") start(); else window.addEventListener("load", start);
});
