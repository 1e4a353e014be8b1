//! The dashboard in real headless Chromium: every page opens and renders at laptop and phone
//! widths, a build submitted through the form runs on a local builder, and its log appears
//! live on the job page. Screenshots go to `test-output/dashboard/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::{local, server};
use buildfleet_testkit::browser::Browser;

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/dashboard")
}

/// The `itoa` crate from the local cargo cache: a real crate with no dependencies.
fn itoa_crate() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let cache = home.join("registry/cache");
    std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|entry| entry.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("itoa-") && n.ends_with(".crate"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no itoa-*.crate under {}; run `cargo fetch` first",
                cache.display()
            )
        })
}

#[actix_rt::test]
async fn dashboard_pages_submit_and_live_log_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(data.path());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = server::start(config).await.unwrap();
    let builders = local::start_builders(&running, data.path(), 1, None)
        .await
        .unwrap();
    let base = running.public_url.clone();
    let shots = screenshot_dir();

    let mut browser = Browser::launch().await;
    for (name, path) in [
        ("overview", "/"),
        ("builders", "/builders"),
        ("jobs", "/jobs"),
        ("submit", "/submit"),
    ] {
        browser.set_viewport(1280, 900, false).await;
        browser.open(&format!("{base}{path}")).await;
        let heading = browser
            .eval("document.querySelector('h1').textContent")
            .await;
        assert!(
            heading.as_str().is_some_and(|h| !h.is_empty()),
            "{path} has a heading"
        );
        browser
            .screenshot(&shots.join(format!("{name}-laptop.png")))
            .await;
        browser.set_viewport(390, 844, true).await;
        browser.open(&format!("{base}{path}")).await;
        // Nothing overflows the phone's width except inside scrollable tables.
        let overflow = browser
            .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await;
        assert_eq!(
            overflow,
            serde_json::json!(true),
            "{path} fits a phone's width"
        );
        browser
            .screenshot(&shots.join(format!("{name}-phone.png")))
            .await;
    }
    browser.set_viewport(1280, 900, false).await;

    // The builders page shows the local builder online.
    browser.open(&format!("{base}/builders")).await;
    browser.wait_for("document.body.innerText.includes('local-1') && document.body.innerText.includes('online')", Duration::from_secs(10)).await;

    // Submit through the form: token in the header field, archive picked in the file input.
    browser.open(&format!("{base}/submit")).await;
    let token = running.admin_token.clone();
    browser
        .eval(&format!(
            "(() => {{ const i = document.getElementById('admin-token'); i.value = {token:?}; i.dispatchEvent(new Event('change')); return true; }})()"
        ))
        .await;
    browser.set_file("input[name=archive]", &itoa_crate()).await;
    browser
        .eval("document.querySelector('input[name=parameters]').value = 'offline=true'")
        .await;
    // Annotations, one per line: a value with a comma, and a link.
    browser
        .eval(
            "document.querySelector('textarea[name=annotations]').value = \
             'crate=itoa\\nauthor=Ada, Grace\\nlinks.ci=https://ci.invalid/run/7'",
        )
        .await;
    browser
        .eval("document.querySelector('#submit-form button[type=submit]').click()")
        .await;
    let job_url = browser
        .wait_for(
            "location.pathname.startsWith('/jobs/') && location.pathname",
            Duration::from_secs(15),
        )
        .await;
    let job_id: i64 = job_url
        .as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .parse()
        .unwrap();

    // The log grows live while the job runs, then the page shows the end state and artifacts.
    browser
        .wait_for(
            "document.querySelectorAll('#live-log span').length > 0",
            Duration::from_secs(30),
        )
        .await;
    browser.screenshot(&shots.join("job-live-log.png")).await;
    browser
        .wait_for(
            "document.getElementById('job-state').textContent === 'succeeded'",
            Duration::from_secs(120),
        )
        .await;
    // The page reloads itself at the end; its log streams in again from the start.
    browser
        .wait_for(
            "document.body.innerText.includes('ssh-keygen -Y verify')",
            Duration::from_secs(15),
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('live-log').innerText.includes('cargo build')",
            Duration::from_secs(15),
        )
        .await;
    // The stream's `end` says how it ended; the log no longer claims to be live.
    browser
        .wait_for(
            "document.getElementById('log-status').textContent.endsWith('lines, succeeded')",
            Duration::from_secs(15),
        )
        .await;
    browser.screenshot(&shots.join("job-succeeded.png")).await;
    // The annotations are on the page, the http(s) one as a link.
    let link = browser
        .eval("document.querySelector('table.annotations a[href=\"https://ci.invalid/run/7\"]') !== null && document.querySelector('table.annotations').innerText.includes('Ada, Grace')")
        .await;
    assert_eq!(
        link,
        serde_json::json!(true),
        "the job page shows its annotations"
    );

    let job: serde_json::Value = awc::Client::new()
        .get(format!("{base}/api/v1/jobs/{job_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .limit(1 << 20)
        .await
        .unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["artifacts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        job["annotations"],
        serde_json::json!({
            "crate": "itoa",
            "author": "Ada, Grace",
            "links.ci": "https://ci.invalid/run/7",
        })
    );

    drop(browser);
    for builder in builders {
        builder.cancel();
        let _ = builder.wait().await;
    }
    running.stop(true).await;
}

#[actix_rt::test]
async fn pages_render_without_javascript_and_reject_bad_filters() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(data.path());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = server::start(config).await.unwrap();
    let client = awc::Client::new();
    for path in ["/", "/builders", "/jobs", "/jobs?state=queued", "/submit"] {
        let mut response = client
            .get(format!("{}{path}", running.public_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{path} is HTML");
        assert!(body.contains("<nav>"), "{path} has the navigation");
    }
    for bad in ["state=bogus", "annotation=Not%20a%20key:x"] {
        let response = client
            .get(format!("{}/jobs?{bad}", running.public_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let response = client
        .get(format!("{}/jobs/999", running.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    running.stop(true).await;
}
