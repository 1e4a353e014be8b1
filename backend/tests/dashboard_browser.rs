//! The dashboard in real headless Chromium, against the real backend and a real builder
//! (in-process, running shell recipes that write a build's log).
//!
//! - Every page, in every state a job or builder can be in, at a laptop (1366 px) and a phone
//!   (390 px) width: no element or text reaches past the window and nothing scrolls
//!   sideways (measured in the DOM), text keeps a contrast of 4.5:1 (3:1 when large), every
//!   form field has a label and every button a name; a screenshot of each goes to
//!   `test-output/dashboard/`. Pages with actions are walked with the Tab key: every control
//!   is reached and shows where the focus is.
//! - Every builder action from the page: admitting a pasted `ssh-keygen` key, issuing and
//!   revoking an enrolment token (its secret enrols a real key), pause, drain (by keyboard),
//!   resume, disable, enable, remove.
//! - A job submitted through the form, its log followed live (server-rendered up to the
//!   page's load, streamed from there without a line lost or repeated), searched, numbered
//!   and timed, and the page settling when the job ends: the stream closed, the log no longer
//!   "live", the head and artifacts updated in place. `chromium --dump-dom` finishes on a
//!   live job's page; a finished job's page needs no script at all.
//! - The projects page's create and change forms, the tokens page's create (the secret shown
//!   once) and revoke, and a job submitted by a project's token to its project with a retry
//!   policy from the submit form's "Retry" fieldset.
//! - A project's webhooks page: a webhook added through the form (its secret shown once) and
//!   removed, the retention policy set through its form; a finished job's artifacts deleted
//!   and a queued job boosted from their pages; the API's refusals shown beside the form or
//!   button.
//! - The registry follower's pages (against the test kit's local registry) at both widths,
//!   and a crate submitted by name through the form, resolved by the server.
//!
//! They run on SQLite: what the pages show is pinned on both databases by the snapshots of
//! `server_snapshots.rs`; here it is the browser's side that is tested.

use std::path::PathBuf;
use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_backend::registry::RegistryFile;
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeBook, RecipeConfig};
use buildfleet_testkit::browser::{chromium_binary, Browser};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    configure_server, e2e_recipes, small_source, upload_source, wait_connected, wait_job,
    wait_outcome, E2eBuilder,
};
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::registry::{CrateFile, LocalRegistry, SAMPLE_BINARY, SAMPLE_LIBRARY};
use buildfleet_testkit::server::TestServer;
use serde_json::{json, Value};

const LAPTOP: (u32, u32) = (1366, 900);
const PHONE: (u32, u32) = (390, 844);
const STEP: Duration = Duration::from_secs(15);
const JOB_LIMIT: Duration = Duration::from_secs(30);

/// Prints a build's log as cargo does (progress and warnings on standard error, the rest on
/// standard output); with a `gate` parameter it waits for that file before going on, and
/// `more` sets how many lines follow. One artifact.
const BUILD_RECIPE: &str = "dash-build";
/// Fails like a compile error.
const FAIL_RECIPE: &str = "dash-fail";
/// No builder offers it: a job for it stays queued.
const NOBODY_RECIPE: &str = "nobody-offers-this";

fn dashboard_recipes() -> Vec<RecipeConfig> {
    let shell = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let mut recipes = e2e_recipes();
    recipes.push(RecipeConfig {
        name: BUILD_RECIPE.into(),
        version: "1".into(),
        commands: vec![shell(
            "echo '   Compiling demo v0.1.0 (/src)' >&2; \
             for i in 1 2 3; do echo \"building part $i\"; done; \
             echo 'warning: unused variable: `x`' >&2; \
             if [ -n \"${BUILDFLEET_PARAM_GATE:-}\" ]; then \
               echo 'waiting for the gate'; \
               while [ ! -e \"$BUILDFLEET_PARAM_GATE\" ]; do sleep 0.05; done; \
             fi; \
             i=4; while [ $i -le $((3 + ${BUILDFLEET_PARAM_MORE:-3})) ]; do echo \"building part $i\"; i=$((i + 1)); done; \
             echo '    Finished `release` profile [optimized] target(s) in 0.42s' >&2; \
             echo demo > \"$BUILDFLEET_OUT/demo.txt\"",
        )],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: "demo.txt".into(),
            path: "demo.txt".into(),
            pack: Pack::File,
        }],
        image: None,
        version_commands: Vec::new(),
    });
    recipes.push(RecipeConfig {
        name: FAIL_RECIPE.into(),
        version: "1".into(),
        commands: vec![shell(
            "echo '   Compiling demo v0.1.0 (/src)' >&2; \
             echo 'error[E0425]: cannot find value `y` in this scope' >&2; \
             echo 'error: could not compile `demo` (lib) due to 1 previous error' >&2; \
             exit 101",
        )],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    });
    recipes
}

/// The end-to-end backend, with a heartbeat timeout that a loaded machine (two cores shared
/// with Chromium and compilers) cannot miss: these tests are about pages, not lost builders.
async fn start(db: TestDb) -> TestServer {
    TestServer::start_with(db, |config| {
        configure_server(config);
        config.timings.heartbeat_timeout = Duration::from_secs(15);
    })
    .await
}

async fn start_builder(server: &TestServer, name: &str) -> E2eBuilder {
    E2eBuilder::start(server, name, |config| {
        config.recipes = RecipeBook::with_builtins(dashboard_recipes()).expect("recipes");
        config.max_concurrent_jobs = 4;
    })
    .await
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/dashboard")
}

/// Everything on the page that breaks the rules in the module's doc, one line each: what
/// and where. Empty when the page is fine.
const AUDIT: &str = r##"(() => {
  const problems = [];
  const vw = document.documentElement.clientWidth;
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    if (typeof el.className === "string" && el.className.trim()) s += "." + el.className.trim().split(/\s+/).join(".");
    const text = (el.innerText || el.value || "").trim().replace(/\s+/g, " ").slice(0, 50);
    return text ? s + " \"" + text + "\"" : s;
  };
  const shown = (el) => {
    const r = el.getBoundingClientRect();
    const st = getComputedStyle(el);
    return (r.width > 0 || r.height > 0) && st.visibility !== "hidden" ? r : null;
  };
  if (document.documentElement.scrollWidth > vw) {
    problems.push("the page scrolls sideways: " + document.documentElement.scrollWidth + " > " + vw + " px");
  }
  for (const el of document.body.querySelectorAll("*")) {
    const r = shown(el);
    if (!r) continue;
    if (r.right > vw + 0.5 || r.left < -0.5) {
      problems.push("past the window (" + Math.round(r.left) + " to " + Math.round(r.right) + " of " + vw + " px): " + describe(el));
    }
    const st = getComputedStyle(el);
    if (!["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName) && st.overflowX !== "visible" && el.scrollWidth > el.clientWidth + 1) {
      problems.push("scrolls sideways (" + el.scrollWidth + " > " + el.clientWidth + " px): " + describe(el));
    }
  }
  const parse = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, under) => ({
    r: top.r * top.a + under.r * (1 - top.a),
    g: top.g * top.a + under.g * (1 - top.a),
    b: top.b * top.a + under.b * (1 - top.a),
    a: 1,
  });
  const luminance = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const background = (el) => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let bg = { r: 255, g: 255, b: 255, a: 1 };
    for (const e of chain) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) bg = over(c, bg);
    }
    return bg;
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  const checked = new Set();
  while (walker.nextNode()) {
    const text = walker.currentNode;
    const el = text.parentElement;
    if (!text.textContent.trim() || !el || !shown(el)) continue;
    range.selectNodeContents(text);
    for (const r of range.getClientRects()) {
      if (r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5)) {
        problems.push("text past the window: " + describe(el));
        break;
      }
    }
    if (checked.has(el) || el.closest(":disabled")) continue;
    checked.add(el);
    const st = getComputedStyle(el);
    const bg = background(el);
    const fg = over(parse(st.color), bg);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(st.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(st.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push("contrast " + ratio.toFixed(2) + ":1 (" + st.color + " on rgb(" + [bg.r, bg.g, bg.b].map(Math.round) + ")): " + describe(el));
    }
  }
  for (const c of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    if (c.labels.length === 0 && !c.getAttribute("aria-label") && !c.getAttribute("aria-labelledby")) {
      problems.push("a field without a label: " + describe(c) + " named " + c.name);
    }
  }
  for (const b of document.querySelectorAll("button, a[href]")) {
    if (!(b.innerText || b.getAttribute("aria-label") || "").trim()) problems.push("a control without a name: " + describe(b));
  }
  return [...new Set(problems)].slice(0, 40);
})()"##;

/// Opens `url` and waits until the new document has loaded (not the one before it).
async fn load(browser: &mut Browser, url: &str) {
    browser.eval("window.leftThisPage = true").await;
    browser.open(url).await;
    browser
        .wait_for(
            "window.leftThisPage !== true && document.readyState === 'complete'",
            STEP,
        )
        .await;
}

/// Opens `url` at both widths, waits for `ready`, audits it and takes its screenshots.
async fn check_page(browser: &mut Browser, name: &str, url: &str, ready: &str) {
    for ((width, height), mobile, suffix) in [(LAPTOP, false, "laptop"), (PHONE, true, "phone")] {
        browser.set_viewport(width, height, mobile).await;
        load(browser, url).await;
        browser.wait_for(ready, STEP).await;
        audit(browser, &format!("{name}-{suffix}"), url).await;
    }
}

/// Audits the page as it is now (a state reached by interaction) and takes its screenshot.
async fn audit(browser: &mut Browser, shot: &str, what: &str) {
    let problems = browser.eval(AUDIT).await;
    assert_eq!(
        problems,
        json!([]),
        "{what} ({shot}) breaks the layout or accessibility rules"
    );
    browser
        .screenshot(&screenshot_dir().join(format!("{shot}.png")))
        .await;
}

/// The same state at both widths, without reloading (a reload would lose it).
async fn audit_both(browser: &mut Browser, shot: &str, what: &str) {
    browser.set_viewport(PHONE.0, PHONE.1, true).await;
    audit(browser, &format!("{shot}-phone"), what).await;
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    audit(browser, &format!("{shot}-laptop"), what).await;
}

async fn press(browser: &mut Browser, key: &str, code: &str, key_code: u32, text: &str) {
    for kind in ["keyDown", "keyUp"] {
        let mut event = json!({
            "type": kind, "key": key, "code": code,
            "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code,
        });
        if kind == "keyDown" && !text.is_empty() {
            event["text"] = json!(text);
        }
        browser.call("Input.dispatchKeyEvent", event).await;
    }
}

async fn press_tab(browser: &mut Browser) {
    press(browser, "Tab", "Tab", 9, "").await;
}

/// Walks the page with Tab from the top: every visible control must take the focus, and
/// show it (an outline).
async fn check_keyboard(browser: &mut Browser, what: &str) {
    let count = browser
        .eval(
            r#"(() => {
              // A collapsed <details> shows its summary only: its controls count once it is open.
              document.querySelectorAll('details:not([open])').forEach((d) => { d.open = true; });
              const controls = [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]:not([tabindex="-1"])')]
                .filter((el) => !el.disabled && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden");
              controls.forEach((el, i) => { el.dataset.kb = i; });
              // Tab goes on from the first control, as from the top of the page.
              controls[0].focus();
              return controls.length;
            })()"#,
        )
        .await
        .as_u64()
        .expect("a count");
    assert!(count > 0, "{what} has controls");
    let mut reached = std::collections::BTreeSet::from([0]);
    for _ in 0..count + 2 {
        press_tab(browser).await;
        let focused = browser
            .eval(
                r#"(() => {
                  const el = document.activeElement;
                  if (!el || el.dataset.kb === undefined) return null;
                  const st = getComputedStyle(el);
                  const ring = st.outlineStyle !== "none" && parseFloat(st.outlineWidth) >= 1;
                  return [Number(el.dataset.kb), ring, el.outerHTML.slice(0, 80)];
                })()"#,
            )
            .await;
        if let Some([index, ring, html]) = focused.as_array().map(Vec::as_slice) {
            assert_eq!(ring, &json!(true), "{what}: no focus outline on {html}");
            reached.insert(index.as_u64().expect("an index"));
        }
    }
    let missed: Vec<u64> = (0..count).filter(|i| !reached.contains(i)).collect();
    let names = browser
        .eval(&format!(
            "{missed:?}.map((i) => document.querySelector('[data-kb=\"' + i + '\"]').outerHTML.slice(0, 80))"
        ))
        .await;
    assert!(missed.is_empty(), "{what}: Tab never reaches {names:#}");
}

/// Saves the admin token in the browser, as typing it into the header field does, and
/// returns once the session cookie holds it too (the page's own update of the cookie runs
/// on its own time: the same request is made here and awaited), so a page loaded next is
/// rendered for the token.
async fn enter_token(browser: &mut Browser, token: &str) {
    browser
        .eval(&format!(
            "(async () => {{ const i = document.getElementById('admin-token'); i.value = {token:?}; \
             i.dispatchEvent(new Event('change')); \
             const r = await fetch('/session', {{ method: 'POST', credentials: 'same-origin', \
               headers: {{ Authorization: 'Bearer ' + {token:?} }} }}); \
             return r.ok; }})()"
        ))
        .await;
}

async fn set_field(browser: &mut Browser, selector: &str, value: &str) {
    browser
        .eval(&format!(
            "(() => {{ const f = document.querySelector({selector:?}); f.value = {value:?}; \
             f.dispatchEvent(new Event('input', {{ bubbles: true }})); return true; }})()"
        ))
        .await;
}

/// Clicks the element; a message shown before is hidden first, so [`message`] waits for the
/// one the click brings.
async fn click(browser: &mut Browser, selector: &str) {
    let found = browser
        .eval(&format!(
            "(() => {{ const b = document.querySelector({selector:?}); if (!b) return false; \
             document.getElementById('message').hidden = true; b.click(); return true; }})()"
        ))
        .await;
    let page = browser
        .eval("document.querySelector('main').innerText")
        .await;
    assert_eq!(
        found,
        json!(true),
        "nothing to click at {selector} in {page}"
    );
}

/// The text of `#message` once it shows.
async fn message(browser: &mut Browser) -> String {
    browser
        .wait_for(
            "(() => { const m = document.getElementById('message'); return m && !m.hidden && m.textContent; })()",
            STEP,
        )
        .await
        .as_str()
        .expect("message text")
        .to_owned()
}

fn text_has(selector: &str, text: &str) -> String {
    format!("(() => {{ const e = document.querySelector({selector:?}); return !!e && e.innerText.includes({text:?}); }})()")
}

async fn submit_built(server: &TestServer, digest: &str, fields: Value) -> i64 {
    let mut body = json!({ "source_url": null, "source_sha256": digest });
    if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
        body.extend(fields.clone());
    }
    server.submit(body).await
}

#[actix_rt::test]
async fn every_page_and_state_fits_a_laptop_and_a_phone() {
    let server = start(TestDb::sqlite()).await;
    let builder = start_builder(&server, "dash-builder").await;
    let spare = TestKey::generate("spare-offline");
    let spare_id = server.admit(&spare).await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let gates = tempfile::tempdir().unwrap();
    // A webhook nobody answers: the project's page lists its failing deliveries.
    let (status, hook) = server
        .post_admin(
            "/projects/default/default/webhooks",
            &json!({ "url": "http://127.0.0.1:9/a-receiver-that-is-not-there" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");

    let long_link = format!(
        "https://ci.invalid/{}",
        "very-long-path-segment-".repeat(12)
    );
    let succeeded = submit_built(
        &server,
        &digest,
        json!({
            "recipe": BUILD_RECIPE,
            "annotations": {
                "crate": "demo", "version": "0.1.0", "target": "x86_64-unknown-linux-gnu",
                "commit": "5bb2f0c3b0e4a1d0c6b0e9a8f7d6c5b4a3928170",
                "author": "Ada Lovelace <ada@example.invalid>",
                "message": "Release 0.1.0: a message long enough to need more than one line on a phone, and then some more words\n\nWith a body.",
                "links.ci": long_link,
                "links.changelog": "https://example.invalid/demo/CHANGELOG.md",
            },
        }),
    )
    .await;
    wait_outcome(&server, succeeded, "succeeded", JOB_LIMIT).await;
    let failed = submit_built(
        &server,
        &digest,
        json!({ "recipe": FAIL_RECIPE, "annotations": { "branch": "main", "commit": "0123456789abcdef0123" } }),
    )
    .await;
    wait_outcome(&server, failed, "failed", JOB_LIMIT).await;
    // A second attempt: the log pane offers both.
    let (status, retried) = server
        .post_admin(&format!("/jobs/{failed}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    wait_job(&server, failed, JOB_LIMIT, "its second failure", |job| {
        job["state"] == "failed" && job["attempt"] == 2
    })
    .await;
    let never = gates.path().join("never");
    let timed_out = submit_built(
        &server,
        &digest,
        json!({ "recipe": BUILD_RECIPE, "timeout_secs": 1, "max_attempts": 1,
                "parameters": { "gate": never.display().to_string() } }),
    )
    .await;
    wait_outcome(&server, timed_out, "timed_out", JOB_LIMIT).await;
    let cancelled = server.submit(json!({ "recipe": NOBODY_RECIPE })).await;
    let (status, body) = server
        .post_admin(&format!("/jobs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let queued = server
        .submit(json!({ "recipe": NOBODY_RECIPE, "annotations": { "branch": "feature/a-rather-long-branch-name-for-a-phone", "commit": "89abcdef0123456789abcdef" } }))
        .await;
    let gate = gates.path().join("gate");
    let running = submit_built(
        &server,
        &digest,
        json!({ "recipe": BUILD_RECIPE, "parameters": { "gate": gate.display().to_string(), "more": "40" } }),
    )
    .await;
    server.wait_for_state(running, "running").await;
    // The builder holds the running job; paused, it takes no more.
    let (status, body) = server
        .post_admin(&format!("/builders/{}/pause", builder.id), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post_admin(&format!("/builders/{spare_id}/disable"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Enrolment tokens to list: one usable, one revoked.
    for revoke in [false, true] {
        let (status, token) = server
            .post_admin(
                "/enrolment-tokens",
                &json!({ "max_uses": 3, "labels": { "pool": "ci", "zone": "a-long-zone-name" } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        if revoke {
            let url = server.api(&format!("/enrolment-tokens/{}", token["id"]));
            let response = server
                .http
                .delete(url)
                .bearer_auth(&server.admin_token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    }

    let base = server.url.clone();
    let mut browser = Browser::launch().await;
    load(&mut browser, &format!("{base}/")).await;
    enter_token(&mut browser, &server.admin_token).await;
    let live = "document.getElementById('log-status').textContent.endsWith('live')";
    let pages: Vec<(&str, String, String)> = vec![
        ("overview", "/".into(), "true".into()),
        ("jobs", "/jobs".into(), "true".into()),
        ("jobs-failed", "/jobs?state=failed".into(), "true".into()),
        (
            "job-succeeded",
            format!("/jobs/{succeeded}"),
            text_has("#live-log", "Finished"),
        ),
        (
            "job-succeeded-search",
            format!("/jobs/{succeeded}?q=PART"),
            "(() => { const r = [...document.querySelectorAll('#live-log .rec')]; return r.length >= 6 && r.every((x) => x.querySelector('mark')); })()".into(),
        ),
        (
            "job-failed",
            format!("/jobs/{failed}"),
            text_has(".attempt-tabs", "Attempt 2"),
        ),
        (
            "job-failed-attempt-1",
            format!("/jobs/{failed}?attempt=1"),
            text_has("#log-status", "attempt 1 failed"),
        ),
        (
            "job-timed-out",
            format!("/jobs/{timed_out}"),
            text_has("#log-status", "timed out"),
        ),
        ("job-cancelled", format!("/jobs/{cancelled}"), "true".into()),
        (
            "job-queued",
            format!("/jobs/{queued}"),
            text_has("#log-status", "waiting for a builder"),
        ),
        ("job-running", format!("/jobs/{running}"), live.into()),
        (
            "builders",
            "/builders".into(),
            "document.querySelectorAll('#enrolment-tokens tbody tr').length === 2".into(),
        ),
        ("submit", "/submit".into(), "true".into()),
        ("projects", "/projects".into(), "document.querySelector('#project-create-form') !== null".into()),
        ("tokens", "/tokens".into(), "document.querySelector('#token-form') !== null".into()),
        (
            "project-webhooks",
            "/projects/default/default/webhooks".into(),
            "document.querySelector('#retention-form') !== null && document.querySelector('table.deliveries') !== null".into(),
        ),
        ("error-unknown-job", "/jobs/999999".into(), "true".into()),
    ];
    for (name, path, ready) in &pages {
        check_page(&mut browser, name, &format!("{base}{path}"), ready).await;
    }

    // What the pages say about these states.
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &format!("{base}/jobs")).await;
    let list = browser
        .eval("document.querySelector('table.jobs').innerText")
        .await;
    let list = list.as_str().unwrap();
    for expected in [
        "demo@0.1.0 (x86_64-unknown-linux-gnu)",
        "Release 0.1.0",
        "by Ada Lovelace",
        "main@0123456789ab",
        NOBODY_RECIPE,
    ] {
        assert!(
            list.contains(expected),
            "the job list shows {expected:?}: {list}"
        );
    }
    load(&mut browser, &format!("{base}/jobs/{succeeded}")).await;
    let head = browser
        .eval("document.querySelector('dl.facts').innerText")
        .await;
    let head = head.as_str().unwrap();
    for expected in [
        "DURATION",
        "STARTED",
        "UTC",
        "FINISHED",
        "BUILDER",
        "dash-builder",
        "attempt 1",
    ] {
        assert!(
            head.contains(expected),
            "the job's head shows {expected:?}: {head}"
        );
    }
    let log_link = browser
        .eval("document.querySelector('dl.facts a[href$=\"/log?attempt=1&format=text\"]') !== null")
        .await;
    assert_eq!(log_link, json!(true), "the head links the attempt's log");
    // Standard error is marked, not painted: only the warning is coloured.
    let colours = browser
        .eval(
            r#"(() => {
              const recs = [...document.querySelectorAll('#live-log .rec')];
              const find = (t) => recs.find((r) => r.querySelector('.tx').textContent.trimStart().startsWith(t));
              const colour = (r) => getComputedStyle(r).color;
              return {
                compiling: [find('Compiling').className, colour(find('Compiling'))],
                warning: [find('warning:').className, colour(find('warning:'))],
                stdout: [find('building part 1').className, colour(find('building part 1'))],
              };
            })()"#,
        )
        .await;
    assert_eq!(colours["compiling"][0], "rec err", "{colours}");
    assert_eq!(colours["warning"][0], "rec err lvl-warning", "{colours}");
    assert_eq!(colours["stdout"][0], "rec out", "{colours}");
    assert_eq!(
        colours["compiling"][1], colours["stdout"][1],
        "a progress line on standard error is not coloured: {colours}"
    );
    assert_ne!(colours["warning"][1], colours["stdout"][1], "{colours}");
    // Each state has its own pill colours (the cancelled one included).
    load(&mut browser, &format!("{base}/jobs")).await;
    let pills = browser
        .eval(
            r#"(() => {
              const seen = {};
              for (const p of document.querySelectorAll('table.jobs .state')) {
                const st = getComputedStyle(p);
                seen[p.textContent] = st.color + " on " + st.backgroundColor + " " + st.boxShadow;
              }
              return seen;
            })()"#,
        )
        .await;
    let pills = pills.as_object().unwrap();
    assert!(pills.len() >= 5, "{pills:?}");
    let styles: std::collections::BTreeSet<_> = pills.values().map(|v| v.to_string()).collect();
    assert_eq!(
        styles.len(),
        pills.len(),
        "every state looks different: {pills:#?}"
    );
    load(&mut browser, &format!("{base}/builders")).await;
    let cards = browser
        .eval("document.querySelector('.builder-list').innerText")
        .await;
    let cards = cards.as_str().unwrap();
    for expected in [
        "dash-builder",
        "paused",
        "1 of 4 slots",
        &format!("#{running}"),
        "spare-offline",
        "disabled",
        "offline",
        "never",
    ] {
        assert!(
            cards.contains(expected),
            "the builders page shows {expected:?}: {cards}"
        );
    }

    // Keyboards reach every action.
    for path in [
        "/builders".to_owned(),
        format!("/jobs/{running}"),
        "/submit".to_owned(),
        format!("/jobs/{failed}"),
        "/projects".to_owned(),
        "/tokens".to_owned(),
        "/projects/default/default/webhooks".to_owned(),
        format!("/jobs/{succeeded}"),
        format!("/jobs/{queued}"),
    ] {
        load(&mut browser, &format!("{base}{path}")).await;
        check_keyboard(&mut browser, &path).await;
    }

    std::fs::write(&gate, b"").unwrap();
    wait_outcome(&server, running, "succeeded", JOB_LIMIT).await;
    drop(browser);
    builder.stop().await;
    server.shutdown().await;
}

#[actix_rt::test]
async fn builders_are_admitted_enrolled_and_steered_from_the_page() {
    let server = start(TestDb::sqlite()).await;
    let worker = start_builder(&server, "worker").await;
    wait_connected(&server, &["worker"]).await;
    let base = server.url.clone();
    let mut browser = Browser::launch().await;
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &format!("{base}/builders")).await;
    enter_token(&mut browser, &server.admin_token).await;
    browser
        .wait_for(
            text_has("#enrolment-tokens", "No enrolment tokens issued").as_str(),
            STEP,
        )
        .await;

    // Admit a key pasted into the form; a bad one is refused with the server's words.
    let pasted = TestKey::generate("pasted-1");
    set_field(&mut browser, "#admit-form [name=name]", "pasted-1").await;
    set_field(
        &mut browser,
        "#admit-form [name=public_key]",
        "ssh-ed25519 not-a-key",
    )
    .await;
    click(&mut browser, "#admit-form button[type=submit]").await;
    let refused = message(&mut browser).await;
    assert!(refused.starts_with("bad_request: public_key"), "{refused}");
    audit_both(&mut browser, "builders-admit-refused", "a refused key").await;
    set_field(
        &mut browser,
        "#admit-form [name=public_key]",
        &pasted.public_openssh,
    )
    .await;
    set_field(
        &mut browser,
        "#admit-form [name=labels]",
        "pool=gpu, os=linux",
    )
    .await;
    click(&mut browser, "#admit-form button[type=submit]").await;
    browser
        .wait_for(text_has(".builder-list", "pasted-1").as_str(), STEP)
        .await;
    let said = message(&mut browser).await;
    assert!(
        said.contains("Admitted pasted-1") && said.contains(pasted.fingerprint.as_str()),
        "{said}"
    );
    let listed = server.get_ok("/builders").await;
    let admitted = listed["builders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "pasted-1")
        .cloned()
        .expect("pasted-1 is admitted");
    assert_eq!(admitted["fingerprint"], pasted.fingerprint.as_str());
    assert_eq!(admitted["labels"], json!({ "pool": "gpu", "os": "linux" }));
    let pasted_id = admitted["id"].as_i64().unwrap();

    // Issue an enrolment token: its secret is shown once and enrols a real key.
    set_field(&mut browser, "#enrolment-form [name=max_uses]", "2").await;
    set_field(&mut browser, "#enrolment-form [name=ttl_secs]", "86400").await;
    set_field(&mut browser, "#enrolment-form [name=labels]", "pool=ci").await;
    click(&mut browser, "#enrolment-form button[type=submit]").await;
    let secret = browser
        .wait_for(
            "(() => { const b = document.getElementById('issued-token'); return !b.hidden && document.getElementById('issued-secret').textContent; })()",
            STEP,
        )
        .await;
    let secret = secret.as_str().unwrap().to_owned();
    assert!(secret.starts_with("bfenrol_"), "{secret}");
    browser
        .wait_for(text_has("#enrolment-tokens tbody", "0 of 2").as_str(), STEP)
        .await;
    audit_both(&mut browser, "builders-token-issued", "an issued token").await;
    let enrolling = TestKey::generate("enrolled-1");
    let enrol = |token: String, key: &TestKey| json!({ "token": token, "name": key.name, "public_key": key.public_openssh });
    let (status, body) = server
        .post("/enrol", None, &enrol(secret.clone(), &enrolling))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["builder"]["labels"], json!({ "pool": "ci" }));
    load(&mut browser, &format!("{base}/builders")).await;
    browser
        .wait_for(text_has("#enrolment-tokens tbody", "1 of 2").as_str(), STEP)
        .await;
    // Revoke it: the list says so, and it enrols nobody more.
    click(&mut browser, "#enrolment-tokens button.danger").await;
    browser
        .wait_for(
            text_has("#enrolment-tokens tbody", "revoked").as_str(),
            STEP,
        )
        .await;
    let later = TestKey::generate("enrolled-2");
    let (status, body) = server.post("/enrol", None, &enrol(secret, &later)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The connected builder: pause, resume, drain (by keyboard), resume, disable, enable.
    let card = format!("#builder-{}", worker.id);
    let live = |field: &'static str| {
        let server = &server;
        let id = worker.id;
        async move { server.get_ok(&format!("/builders/{id}")).await["live"][field].clone() }
    };
    let act = |label: &str| format!("{card} .actions button[data-action$=\"/{label}\"]");
    click(&mut browser, &act("pause")).await;
    browser
        .wait_for(text_has(&card, "paused").as_str(), STEP)
        .await;
    assert_eq!(message(&mut browser).await, "Pause: done.");
    assert_eq!(live("paused").await, json!(true));
    audit_both(&mut browser, "builders-paused", "a paused builder").await;
    click(&mut browser, &act("resume")).await;
    browser
        .wait_for(&format!("!{}", text_has(&card, "paused")), STEP)
        .await;
    assert_eq!(live("paused").await, json!(false));
    // Tab to Drain and press Enter.
    browser
        .eval("document.querySelector('a.skip').focus()")
        .await;
    let drain = act("drain");
    let mut focused = false;
    for _ in 0..60 {
        press_tab(&mut browser).await;
        if browser
            .eval(&format!(
                "document.activeElement === document.querySelector({drain:?})"
            ))
            .await
            == json!(true)
        {
            focused = true;
            break;
        }
    }
    assert!(focused, "Tab reaches Drain");
    press(&mut browser, "Enter", "Enter", 13, "\r").await;
    browser
        .wait_for(text_has(&card, "draining").as_str(), STEP)
        .await;
    assert_eq!(live("draining").await, json!(true));
    click(&mut browser, &act("resume")).await;
    browser
        .wait_for(&format!("!{}", text_has(&card, "draining")), STEP)
        .await;
    click(&mut browser, &act("disable")).await;
    browser
        .wait_for(text_has(&card, "disabled").as_str(), STEP)
        .await;
    let got = server.get_ok(&format!("/builders/{}", worker.id)).await;
    assert_eq!(got["enabled"], json!(false), "{got}");
    audit_both(&mut browser, "builders-disabled", "a disabled builder").await;
    click(&mut browser, &act("enable")).await;
    browser
        .wait_for(&format!("!{}", text_has(&card, "disabled")), STEP)
        .await;
    let got = server.get_ok(&format!("/builders/{}", worker.id)).await;
    assert_eq!(got["enabled"], json!(true), "{got}");
    // It reconnects by itself once enabled.
    browser
        .wait_for(
            &format!(
                "(async () => {{ const r = await fetch('/api/v1/builders/{}'); return (await r.json()).connected; }})()",
                worker.id
            ),
            STEP,
        )
        .await;

    // The projects it serves: private to one, an unknown project refused beside the form,
    // then shared again.
    let projects_form = format!("{card} form.builder-projects");
    let projects_of = |id: i64| {
        let server = &server;
        async move { server.get_ok(&format!("/builders/{id}")).await["projects"].clone() }
    };
    set_field(
        &mut browser,
        &format!("{projects_form} input"),
        "default/default",
    )
    .await;
    click(&mut browser, &format!("{projects_form} button")).await;
    assert_eq!(
        message(&mut browser).await,
        "Now serves only default/default."
    );
    assert_eq!(projects_of(worker.id).await, json!(["default/default"]));
    browser
        .wait_for(text_has(&card, "default/default").as_str(), STEP)
        .await;
    audit_both(
        &mut browser,
        "builders-private",
        "a builder private to a project",
    )
    .await;
    set_field(
        &mut browser,
        &format!("{projects_form} input"),
        "nobody/nothing",
    )
    .await;
    click(&mut browser, &format!("{projects_form} button")).await;
    browser
        .wait_for(
            &format!(
                "(() => {{ const e = document.querySelector({:?}); return !!e && !e.hidden && e.textContent.includes('nobody/nothing'); }})()",
                format!("{projects_form} .form-error")
            ),
            STEP,
        )
        .await;
    assert_eq!(
        projects_of(worker.id).await,
        json!(["default/default"]),
        "a refused change changes nothing"
    );
    set_field(&mut browser, &format!("{projects_form} input"), "").await;
    click(&mut browser, &format!("{projects_form} button")).await;
    assert_eq!(message(&mut browser).await, "Now serves every project.");
    assert_eq!(projects_of(worker.id).await, json!([]));

    // Remove the pasted builder: the first press asks, the second removes.
    let remove = format!("#builder-{pasted_id} button.danger");
    click(&mut browser, &remove).await;
    let asked = browser
        .eval(&format!("document.querySelector({remove:?}).textContent"))
        .await;
    assert_eq!(asked, json!("Remove pasted-1? Press again to confirm"));
    assert_eq!(
        server.get(&format!("/builders/{pasted_id}")).await.0,
        StatusCode::OK,
        "one press removes nothing"
    );
    click(&mut browser, &remove).await;
    browser
        .wait_for(
            &format!("document.querySelector('#builder-{pasted_id}') === null"),
            STEP,
        )
        .await;
    assert_eq!(
        server.get(&format!("/builders/{pasted_id}")).await.0,
        StatusCode::NOT_FOUND
    );

    drop(browser);
    worker.stop().await;
    server.shutdown().await;
}

#[actix_rt::test]
async fn a_job_page_follows_its_live_log_and_settles_when_the_job_ends() {
    let server = start(TestDb::sqlite()).await;
    let builder = start_builder(&server, "log-builder").await;
    let base = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("demo-0.1.0.tar.gz");
    std::fs::write(&archive, small_source()).unwrap();
    let gate = dir.path().join("gate");

    let mut browser = Browser::launch().await;
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &format!("{base}/submit")).await;
    enter_token(&mut browser, &server.admin_token).await;
    // The recipes connected builders offer are listed.
    let offered = browser
        .eval("[...document.querySelectorAll('#offered-recipes option')].map((o) => o.value)")
        .await;
    assert!(
        offered.as_array().unwrap().contains(&json!(BUILD_RECIPE)),
        "{offered}"
    );
    assert!(browser
        .eval(&text_has("#recipes-offered", "dash-build (1 builder)"))
        .await
        .as_bool()
        .unwrap());
    // A crate: the server resolves it, and without a registry refuses it in its own words.
    set_field(&mut browser, "[name=crate]", "itoa@1.0.14").await;
    click(&mut browser, "#submit-form button[type=submit]").await;
    let refused = message(&mut browser).await;
    assert!(
        refused.starts_with("bad_request: ") && refused.contains("crate"),
        "{refused}"
    );
    audit_both(&mut browser, "submit-refused", "a refused crate").await;
    // A crate and an archive at once are refused before anything is sent.
    browser.set_file("input[name=archive]", &archive).await;
    click(&mut browser, "#submit-form button[type=submit]").await;
    browser
        .wait_for(text_has("#message", "not both").as_str(), STEP)
        .await;
    set_field(&mut browser, "[name=crate]", "").await;
    set_field(&mut browser, "[name=recipe]", BUILD_RECIPE).await;
    set_field(
        &mut browser,
        "[name=parameters]",
        &format!("gate={}, more=120", gate.display()),
    )
    .await;
    set_field(&mut browser, "[name=max_attempts]", "2").await;
    set_field(
        &mut browser,
        "[name=annotations]",
        "crate=demo\nversion=0.1.0\nauthor=Ada, Grace\nmessage=Try the log pane\nlinks.ci=https://ci.invalid/run/7",
    )
    .await;
    click(&mut browser, "#submit-form button[type=submit]").await;
    let path = browser
        .wait_for(
            "location.pathname.startsWith('/jobs/') && location.pathname",
            STEP,
        )
        .await;
    let id: i64 = path
        .as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .parse()
        .unwrap();
    let job = server.job(id).await;
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(job["annotations"]["author"], "Ada, Grace");
    assert_eq!(job["annotations"]["links.ci"], "https://ci.invalid/run/7");

    // The job waits at the gate; the page, reloaded now, shows what is stored and streams on.
    browser
        .wait_for(
            text_has("#live-log", "waiting for the gate").as_str(),
            JOB_LIMIT,
        )
        .await;
    load(&mut browser, &format!("{base}/jobs/{id}")).await;
    let stream = browser
        .eval("document.getElementById('live-log').dataset.stream")
        .await;
    assert!(
        stream.as_str().is_some_and(
            |s| s.starts_with(&format!("/api/v1/jobs/{id}/log/stream?attempt=1&offset="))
        ),
        "{stream}"
    );
    browser
        .wait_for(
            "document.getElementById('log-status').textContent.endsWith('· live')",
            STEP,
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#log-follow').checked")
            .await,
        json!(true)
    );
    audit_both(&mut browser, "job-live", "a running job").await;

    // A headless browser loads a live job's page to the end (the stream opens after `load`).
    let dump = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(chromium_binary().expect("chromium"))
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("dump-profile").display()
            ))
            .arg("--dump-dom")
            .arg(format!("{base}/jobs/{id}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium --dump-dom finishes on a live job's page")
    .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(dom.contains("waiting for the gate"), "{dom}");

    // Numbers, times and search, live.
    click(&mut browser, "#log-show-numbers").await;
    click(&mut browser, "#log-show-times").await;
    let shown = browser
        .eval("(() => { const r = document.querySelector('#live-log .rec'); return [r.querySelector('.ln').offsetWidth > 0, r.querySelector('.ts').offsetWidth > 0, r.querySelector('.ts').textContent]; })()")
        .await;
    assert_eq!(shown[0], json!(true), "{shown}");
    assert_eq!(shown[1], json!(true), "{shown}");
    assert!(
        regex::Regex::new(r"^\d\d:\d\d:\d\d\.\d{3}$")
            .unwrap()
            .is_match(shown[2].as_str().unwrap()),
        "{shown}"
    );
    set_field(&mut browser, "#log-search", "PART 2").await;
    let found = browser
        .eval("[...document.querySelectorAll('#live-log .rec:not([hidden])')].map((r) => r.querySelector('.tx').innerHTML)")
        .await;
    assert_eq!(found, json!(["building <mark>part 2</mark>"]));
    assert!(browser
        .eval(&text_has("#log-status", "1 matching"))
        .await
        .as_bool()
        .unwrap());
    audit_both(&mut browser, "job-live-search", "a searched live log").await;
    set_field(&mut browser, "#log-search", "").await;

    // Open the gate: the rest streams in, followed to the bottom; then the page settles in
    // place (no reload): the stream closed, the log no longer live, the head and artifacts new.
    browser.eval("window.stayedOnThePage = true").await;
    std::fs::write(&gate, b"").unwrap();
    browser
        .wait_for(
            "document.getElementById('live-log').dataset.streamState === 'ended'",
            JOB_LIMIT,
        )
        .await;
    let lines = server
        .log_records(id)
        .await
        .iter()
        .filter(|r| r["line"].is_string())
        .count();
    let status = browser
        .eval("document.getElementById('log-status').textContent")
        .await;
    assert_eq!(status, json!(format!("{lines} lines · succeeded")));
    browser
        .wait_for(
            "document.getElementById('job-state').textContent === 'succeeded' && document.body.innerText.includes('demo.txt')",
            STEP,
        )
        .await;
    let settled = browser
        .eval(
            r#"(() => {
              const pre = document.getElementById('live-log');
              const parts = [...pre.querySelectorAll('.tx')].map((t) => t.textContent).filter((t) => t.startsWith('building part'));
              return {
                stayed: window.stayedOnThePage === true,
                follow: document.getElementById('log-follow') === null,
                bottom: pre.scrollHeight - pre.scrollTop - pre.clientHeight < 2,
                scrolls: pre.scrollHeight > pre.clientHeight,
                parts: parts.length,
                unique: new Set(parts).size,
                live: document.body.innerText.includes('· live'),
              };
            })()"#,
        )
        .await;
    assert_eq!(
        settled,
        json!({ "stayed": true, "follow": true, "bottom": true, "scrolls": true,
                "parts": 123, "unique": 123, "live": false }),
        "every line once, followed to the end, and nothing says live"
    );
    audit_both(
        &mut browser,
        "job-ended-in-place",
        "a job that ended while watched",
    )
    .await;

    // Reading up stops following (checked on a fresh live job with a long log).
    let gate2 = dir.path().join("gate2");
    let (digest, _) = upload_source(&server, small_source()).await;
    let second = submit_built(
        &server,
        &digest,
        json!({ "recipe": BUILD_RECIPE, "parameters": { "gate": gate2.display().to_string(), "more": "1" } }),
    )
    .await;
    load(&mut browser, &format!("{base}/jobs/{second}")).await;
    browser
        .wait_for(
            text_has("#live-log", "waiting for the gate").as_str(),
            JOB_LIMIT,
        )
        .await;
    let before = browser
        .eval(
            r#"(async () => {
              const pre = document.getElementById('live-log');
              pre.style.maxHeight = '3rem';
              pre.scrollIntoView();
              pre.scrollTop = pre.scrollHeight;
              await new Promise((r) => setTimeout(r, 50));
              const box = pre.getBoundingClientRect();
              return [document.getElementById('log-follow').checked, pre.scrollHeight > pre.clientHeight,
                      box.left + box.width / 2, box.top + box.height / 2];
            })()"#,
        )
        .await;
    assert_eq!(before[0], json!(true), "{before}");
    assert_eq!(before[1], json!(true), "{before}");
    // The reader turns the mouse wheel up over the log.
    browser
        .call(
            "Input.dispatchMouseEvent",
            json!({ "type": "mouseWheel", "x": before[2], "y": before[3], "deltaX": 0, "deltaY": -600 }),
        )
        .await;
    let unfollowed = browser
        .wait_for(
            "document.getElementById('log-follow').checked === false",
            STEP,
        )
        .await;
    assert_eq!(unfollowed, json!(true));
    std::fs::write(&gate2, b"").unwrap();
    wait_outcome(&server, second, "succeeded", JOB_LIMIT).await;

    // A finished job's page needs no script: the log is in the HTML, and nothing streams.
    let (status, html) = server.get_raw(&format!("{base}/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(html).unwrap();
    assert!(
        html.contains("building part 123") && html.contains(&format!("{lines} lines · succeeded"))
    );
    assert!(
        !html.contains("data-stream="),
        "a finished job's page opens no stream"
    );
    let (_, searched) = server.get_raw(&format!("{base}/jobs/{id}?q=part+12")).await;
    let searched = String::from_utf8(searched).unwrap();
    assert!(searched.contains("5 matching lines"), "part 12 and 120-123");
    load(&mut browser, &format!("{base}/jobs/{id}")).await;
    audit(&mut browser, "job-ended-reloaded-laptop", "a finished job").await;

    drop(browser);
    builder.stop().await;
    server.shutdown().await;
}

/// The registry follower's pages, and a crate submitted by name through the form: the
/// server resolves it through the followed index and annotates it.
#[actix_rt::test]
async fn registry_pages_fit_and_a_crate_is_submitted_by_name() {
    // Packed (blocking) before the server starts: the server shares the test's thread.
    let (registry, samples) = LocalRegistry::start_with_samples();
    let release = CrateFile::binary(SAMPLE_BINARY, "0.2.0");
    let index = registry.sparse_index_url();
    let server = TestServer::start_with(TestDb::sqlite(), |config| {
        configure_server(config);
        config.timings.heartbeat_timeout = Duration::from_secs(15);
        let mut settings = RegistryFile {
            name: Some("local".into()),
            index,
            crates: vec![SAMPLE_BINARY.into(), SAMPLE_LIBRARY.into()],
            ..RegistryFile::default()
        }
        .resolve()
        .expect("registry settings");
        settings.poll_interval = Duration::from_millis(100);
        config.registry = Some(settings);
    })
    .await;
    let crate_page = format!("/crates/{SAMPLE_BINARY}");
    for _ in 0..200 {
        if server.get(&crate_page).await.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A version published while it follows gets a metadata job: the page lists a build.
    registry.publish(&release);
    let base = server.url.clone();
    let mut browser = Browser::launch().await;
    load(&mut browser, &format!("{base}/")).await;
    enter_token(&mut browser, &server.admin_token).await;
    check_page(
        &mut browser,
        "crate",
        &format!("{base}{crate_page}"),
        &text_has("main", "0.2.0"),
    )
    .await;
    check_page(
        &mut browser,
        "registry",
        &format!("{base}/registry"),
        "true",
    )
    .await;

    // The form sends the crate alone; the job is the indexed version, annotated.
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &format!("{base}/submit")).await;
    let spec = format!("{SAMPLE_BINARY}@{}", samples.binary.version);
    set_field(&mut browser, "[name=crate]", &spec).await;
    click(&mut browser, "#submit-form button[type=submit]").await;
    let path = browser
        .wait_for(
            "location.pathname.startsWith('/jobs/') && location.pathname",
            STEP,
        )
        .await;
    let id: i64 = path
        .as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .parse()
        .unwrap();
    let job = server.job(id).await;
    assert_eq!(job["annotations"]["crate"], SAMPLE_BINARY, "{job}");
    assert_eq!(
        job["annotations"]["version"],
        samples.binary.version.as_str()
    );
    assert_eq!(
        job["source_url"],
        registry.dl_url_of(SAMPLE_BINARY, &samples.binary.version)
    );
    assert_eq!(job["source_sha256"], samples.binary.sha256());
    check_page(
        &mut browser,
        "job-crate-by-name",
        &format!("{base}/jobs/{id}"),
        &text_has("h1 + .job-what", &spec),
    )
    .await;
    drop(browser);
    server.shutdown().await;
}

#[actix_rt::test]
async fn pages_render_without_javascript_and_reject_bad_filters() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let client = awc::Client::new();
    for path in ["/", "/builders", "/jobs", "/jobs?state=queued", "/submit"] {
        let mut response = client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{path} is HTML");
        assert!(
            body.contains("<nav aria-label=\"Pages\">"),
            "{path} has the navigation"
        );
    }
    for bad in ["state=bogus", "annotation=Not%20a%20key:x"] {
        let response = client
            .get(format!("{}/jobs?{bad}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let id = server.submit(json!({ "recipe": NOBODY_RECIPE })).await;
    for (query, status) in [
        ("attempt=0", 400),
        ("attempt=2", 400),
        ("attempt=x", 400),
        ("attempt=1&q=x", 200),
    ] {
        let response = client
            .get(format!("{}/jobs/{id}?{query}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
    }
    let response = client
        .get(format!("{}/jobs/999", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.shutdown().await;
}

/// The projects and tokens pages' forms, and the submit form's project and retry policy, as
/// a person uses them: the admin creates and changes a project and makes it a submit token
/// (its secret shown once); that token, pasted in the token field, submits to its project
/// with a retry policy; the admin revokes it, and it is refused from then on.
#[actix_rt::test]
async fn projects_and_tokens_are_managed_and_a_job_submitted_with_a_retry_policy() {
    let server = start(TestDb::sqlite()).await;
    let base = server.url.clone();
    let mut browser = Browser::launch().await;
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &format!("{base}/projects")).await;
    enter_token(&mut browser, &server.admin_token).await;

    // Create a private project, then change its weight and make it public.
    set_field(&mut browser, "#project-create-form [name=name]", "acme/web").await;
    set_field(&mut browser, "#project-create-form [name=weight]", "3").await;
    click(&mut browser, "#project-create-form button[type=submit]").await;
    let said = message(&mut browser).await;
    assert_eq!(said, "Created project acme/web.");
    browser
        .wait_for(text_has("table.projects", "acme/web").as_str(), STEP)
        .await;
    let (status, _) = server.get("/projects/acme/web").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "private: hidden anonymously");
    // Again (the form was rendered afresh): the server's refusal, in its words.
    set_field(&mut browser, "#project-create-form [name=name]", "acme/web").await;
    click(&mut browser, "#project-create-form button[type=submit]").await;
    let refused = message(&mut browser).await;
    assert!(refused.starts_with("conflict: "), "{refused}");
    set_field(
        &mut browser,
        "#project-update-form [name=project]",
        "acme/web",
    )
    .await;
    set_field(&mut browser, "#project-update-form [name=weight]", "5").await;
    set_field(&mut browser, "#project-update-form [name=public]", "true").await;
    click(&mut browser, "#project-update-form button[type=submit]").await;
    let said = message(&mut browser).await;
    assert_eq!(said, "Changed acme/web: weight 5, public.");
    let project = server.get_ok("/projects/acme/web").await;
    assert_eq!(
        (project["weight"].clone(), project["public"].clone()),
        (json!(5), json!(true))
    );
    audit_both(&mut browser, "projects-changed", "a changed project").await;

    // A submit token of it: the secret shows once, the list has it.
    load(&mut browser, &format!("{base}/tokens")).await;
    browser
        .wait_for("!!document.getElementById('token-form')", STEP)
        .await;
    set_field(&mut browser, "#token-form [name=project]", "acme/web").await;
    set_field(&mut browser, "#token-form [name=scope]", "submit").await;
    set_field(
        &mut browser,
        "#token-form [name=description]",
        "CI of acme/web",
    )
    .await;
    set_field(&mut browser, "#token-form [name=expires_in_secs]", "86400").await;
    click(&mut browser, "#token-form button[type=submit]").await;
    let secret = browser
        .wait_for(
            "(() => { const b = document.getElementById('created-token'); return !b.hidden && document.getElementById('created-secret').textContent; })()",
            STEP,
        )
        .await;
    let secret = secret.as_str().unwrap().to_owned();
    assert!(secret.starts_with("bfapi_"), "{secret}");
    browser
        .wait_for(
            text_has("table.api-tokens", "CI of acme/web").as_str(),
            STEP,
        )
        .await;
    assert!(browser
        .eval(&text_has("#created-token", "will not be shown again"))
        .await
        .as_bool()
        .unwrap());
    audit_both(&mut browser, "tokens-created", "a created token").await;
    load(&mut browser, &format!("{base}/tokens")).await;
    assert_eq!(
        browser
            .eval("document.getElementById('created-token').hidden")
            .await,
        json!(true),
        "the secret is not shown again"
    );

    // That token submits to its project with a retry policy.
    enter_token(&mut browser, &secret).await;
    load(&mut browser, &format!("{base}/submit")).await;
    let offered = browser
        .eval("[...document.querySelectorAll('[name=project] option')].map((o) => o.value)")
        .await;
    assert_eq!(offered, json!(["acme/web"]));
    set_field(
        &mut browser,
        "[name=source_url]",
        "https://example.invalid/app-1.0.0.tar.gz",
    )
    .await;
    set_field(
        &mut browser,
        "[name=source_sha256]",
        buildfleet_testkit::server::SOURCE_SHA256,
    )
    .await;
    set_field(&mut browser, "[name=recipe]", NOBODY_RECIPE).await;
    browser
        .eval("(() => { document.querySelector('details.retry').open = true; document.querySelector('[name=retry_infrastructure]').checked = true; return true; })()")
        .await;
    set_field(&mut browser, "[name=retry_exit_codes]", "nine").await;
    // Refused by the field itself, before anything is sent.
    click(&mut browser, "#submit-form button[type=submit]").await;
    assert_eq!(
        browser
            .eval("document.querySelector('[name=retry_exit_codes]').validity.patternMismatch && location.pathname")
            .await,
        json!("/submit")
    );
    set_field(&mut browser, "[name=retry_exit_codes]", "1, 101").await;
    set_field(&mut browser, "[name=retry_backoff_initial_secs]", "5").await;
    set_field(&mut browser, "[name=retry_backoff_max_secs]", "60").await;
    click(&mut browser, "#submit-form button[type=submit]").await;
    let path = browser
        .wait_for(
            "location.pathname.startsWith('/jobs/') && location.pathname",
            STEP,
        )
        .await;
    let id: i64 = path
        .as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .parse()
        .unwrap();
    let job = server.job(id).await;
    assert_eq!(job["project"], "acme/web");
    assert_eq!(
        job["retry"],
        json!({ "lost_builder": true, "infrastructure": true, "exit_codes": [1, 101], "backoff_initial_ms": 5000, "backoff_max_ms": 60000 })
    );
    browser
        .wait_for(text_has("dl.facts", "acme/web").as_str(), STEP)
        .await;

    // The admin revokes it from the list (a second press confirms); it is refused since.
    enter_token(&mut browser, &server.admin_token).await;
    load(&mut browser, &format!("{base}/tokens")).await;
    let revoke = "table.api-tokens button.danger";
    click(&mut browser, revoke).await;
    click(&mut browser, revoke).await;
    browser
        .wait_for(text_has("table.api-tokens", "revoked").as_str(), STEP)
        .await;
    let (status, body) = server
        .post("/jobs", Some(&secret), &json!({ "recipe": NOBODY_RECIPE }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    drop(browser);
    server.shutdown().await;
}

/// The text of `selector` once it shows (a refusal beside its form or button).
async fn shown_text(browser: &mut Browser, selector: &str) -> String {
    browser
        .wait_for(
            &format!(
                "(() => {{ const e = document.querySelector({selector:?}); return !!e && !e.hidden && e.textContent; }})()"
            ),
            STEP,
        )
        .await
        .as_str()
        .expect("text")
        .to_owned()
}

/// A project's webhooks and retention, a job's artifacts and a queued job's boost, from the
/// pages as the project's admin uses them; each refusal of the API shows beside its form or
/// button.
#[actix_rt::test]
async fn webhooks_retention_artifacts_and_boost_are_managed_from_the_pages() {
    let server = start(TestDb::sqlite()).await;
    let builder = start_builder(&server, "actions-builder").await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let built = submit_built(&server, &digest, json!({ "recipe": BUILD_RECIPE })).await;
    wait_outcome(&server, built, "succeeded", JOB_LIMIT).await;
    let queued = server.submit(json!({ "recipe": NOBODY_RECIPE })).await;
    let base = server.url.clone();
    let hooks_page = format!("{base}/projects/default/default/webhooks");
    let mut browser = Browser::launch().await;
    browser.set_viewport(LAPTOP.0, LAPTOP.1, false).await;
    load(&mut browser, &hooks_page).await;
    assert_eq!(
        browser
            .eval("document.getElementById('webhook-form') === null && document.getElementById('retention-form') === null")
            .await,
        json!(true),
        "no forms without a token"
    );
    // Entering the token renders the page again, with its forms.
    enter_token(&mut browser, &server.admin_token).await;
    browser
        .wait_for("!!document.getElementById('webhook-form')", STEP)
        .await;

    // A webhook without events is refused by the API, beside the form.
    set_field(
        &mut browser,
        "#webhook-form [name=url]",
        "http://127.0.0.1:9/hook",
    )
    .await;
    browser
        .eval("(() => { document.querySelectorAll('#webhook-form [name=events]').forEach((c) => { c.checked = false; }); return true; })()")
        .await;
    click(&mut browser, "#webhook-form button[type=submit]").await;
    let refused = shown_text(&mut browser, "#webhook-form .form-error").await;
    assert!(
        refused.starts_with("bad_request: events is empty"),
        "{refused}"
    );
    audit_both(&mut browser, "webhook-refused", "a refused webhook").await;
    // With two events: listed, and its secret shown this once.
    browser
        .eval("(() => { for (const e of ['queued', 'finished']) document.querySelector('#webhook-form [name=events][value=' + e + ']').checked = true; return true; })()")
        .await;
    click(&mut browser, "#webhook-form button[type=submit]").await;
    let said = message(&mut browser).await;
    assert!(
        said.starts_with("Added webhook #") && said.ends_with(" for queued, finished."),
        "{said}"
    );
    let secret = shown_text(&mut browser, "#created-webhook").await;
    assert!(secret.contains("will not be shown again"), "{secret}");
    let secret = browser
        .eval("document.getElementById('webhook-secret').textContent")
        .await;
    assert!(
        secret.as_str().is_some_and(|s| s.starts_with("whsec_")),
        "{secret}"
    );
    browser
        .wait_for(
            text_has("section.webhook", "http://127.0.0.1:9/hook").as_str(),
            STEP,
        )
        .await;
    let listed = server
        .call(
            awc::http::Method::GET,
            "/projects/default/default/webhooks",
            Some(&server.admin_token),
            None,
        )
        .await
        .1;
    let hooks = listed["webhooks"].as_array().expect("webhooks").clone();
    assert_eq!(hooks.len(), 1, "{listed}");
    assert_eq!(hooks[0]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(hooks[0]["events"], json!(["queued", "finished"]));
    let hook = hooks[0]["id"].as_i64().expect("id");
    audit_both(&mut browser, "webhook-added", "an added webhook").await;

    // The retention form: a limit out of bounds is the API's refusal, beside the form; then a
    // policy with a limit lifted ("none", or left empty) is saved and shown.
    set_field(
        &mut browser,
        "#retention-form [name=artifacts_max_age_days]",
        "99999",
    )
    .await;
    click(&mut browser, "#retention-form button[type=submit]").await;
    let refused = shown_text(&mut browser, "#retention-form .form-error").await;
    assert!(
        refused.starts_with("bad_request: ") && refused.contains("artifacts.max_age_days 99999"),
        "{refused}"
    );
    audit_both(&mut browser, "retention-refused", "a refused policy").await;
    set_field(
        &mut browser,
        "#retention-form [name=artifacts_max_age_days]",
        "30",
    )
    .await;
    set_field(
        &mut browser,
        "#retention-form [name=artifacts_keep_last]",
        "none",
    )
    .await;
    set_field(&mut browser, "#retention-form [name=logs_max_age_days]", "").await;
    set_field(&mut browser, "#retention-form [name=logs_keep_last]", "10").await;
    click(&mut browser, "#retention-form button[type=submit]").await;
    let said = message(&mut browser).await;
    assert_eq!(
        said,
        "Retention of default/default saved: artifacts 30 days; logs the last 10 jobs."
    );
    browser
        .wait_for(text_has("#storage", "kept: 30 days").as_str(), STEP)
        .await;
    assert!(browser
        .eval(&text_has("#storage", "kept: the last 10 jobs"))
        .await
        .as_bool()
        .unwrap());
    let policy = server.get_ok("/projects/default/default/retention").await;
    assert_eq!(
        (policy["artifacts"].clone(), policy["logs"].clone()),
        (
            json!({ "max_age_days": 30, "keep_last": null }),
            json!({ "max_age_days": null, "keep_last": 10 })
        )
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#retention-form [name=logs_max_age_days]').value")
            .await,
        json!("none"),
        "the form shows the saved policy"
    );
    audit_both(&mut browser, "retention-saved", "a saved policy").await;

    // The webhook removed (a second press confirms).
    let remove = format!("#webhook-{hook} button.danger");
    click(&mut browser, &remove).await;
    click(&mut browser, &remove).await;
    browser
        .wait_for("!!document.getElementById('no-webhooks')", STEP)
        .await;
    let listed = server
        .call(
            awc::http::Method::GET,
            "/projects/default/default/webhooks",
            Some(&server.admin_token),
            None,
        )
        .await
        .1;
    assert_eq!(listed["webhooks"], json!([]));

    // The finished job's artifacts deleted from its page.
    load(&mut browser, &format!("{base}/jobs/{built}")).await;
    browser
        .wait_for(text_has("#artifacts", "demo.txt").as_str(), STEP)
        .await;
    click(&mut browser, "#delete-artifacts").await;
    assert_eq!(
        browser
            .eval("document.getElementById('delete-artifacts').textContent")
            .await,
        json!("Delete 1 artifact for good? Press again to confirm")
    );
    click(&mut browser, "#delete-artifacts").await;
    assert_eq!(message(&mut browser).await, "Delete artifacts: done.");
    browser
        .wait_for(
            text_has(
                "#artifacts-deleted",
                "by the project's retention or an admin",
            )
            .as_str(),
            STEP,
        )
        .await;
    let job = server.job(built).await;
    assert_eq!(job["artifacts"], json!([]), "{job}");
    assert!(job["artifacts_expired_at"].is_i64(), "{job}");
    audit_both(&mut browser, "job-artifacts-deleted", "deleted artifacts").await;

    // A queued job's page rendered for the admin; the token is then changed to an admin
    // token of the project, which may not boost: refused beside the button.
    let (status, project_admin) = server
        .post_admin(
            "/tokens",
            &json!({ "project": "default/default", "scope": "admin", "description": "project admin" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project_admin}");
    let project_admin = project_admin["secret"].as_str().expect("secret").to_owned();
    load(&mut browser, &format!("{base}/jobs/{queued}")).await;
    enter_token(&mut browser, &project_admin).await;
    click(&mut browser, "#boost-job").await;
    let refused = shown_text(&mut browser, "#boost-error").await;
    assert_eq!(
        refused,
        "forbidden: this API token is an admin token of one project; this needs the admin token or an admin token of no project"
    );
    assert_eq!(server.job(queued).await["priority"], 0);
    audit_both(&mut browser, "job-boost-refused", "a refused boost").await;

    // The admin's token again: boosted, the page says so.
    enter_token(&mut browser, &server.admin_token).await;
    click(&mut browser, "#boost-job").await;
    browser
        .wait_for(text_has("#job-priority", "boosted").as_str(), STEP)
        .await;
    assert_eq!(
        server.job(queued).await["priority"],
        json!(buildfleet_backend::store::BOOST_PRIORITY)
    );
    assert_eq!(
        browser
            .eval("document.getElementById('boost-job') === null")
            .await,
        json!(true),
        "no second boost"
    );
    audit_both(&mut browser, "job-boosted", "a boosted job").await;
    drop(browser);
    builder.stop().await;
    server.shutdown().await;
}
