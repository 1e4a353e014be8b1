//! The local registry fixture against real clients: its sparse index and downloads over
//! HTTP, its git index through `git clone` and `git fetch` (dumb and smart HTTP), and real
//! Cargo resolving, downloading and verifying from both indexes in a `CARGO_HOME` of its
//! own.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use buildfleet_testkit::registry::{
    binary_greeting, cargo_command, git_command, index_path, CrateFile, LocalRegistry,
    SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Answer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

async fn get(url: &str, if_none_match: Option<&str>) -> Answer {
    let mut request = awc::Client::new().get(url);
    if let Some(etag) = if_none_match {
        request = request.insert_header(("If-None-Match", etag));
    }
    let mut response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("an ASCII ETag").to_owned());
    let body = response
        .body()
        .limit(16 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("body of {url}: {e}"));
    Answer {
        status: response.status().as_u16(),
        etag,
        body: body.to_vec(),
    }
}

fn lines(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .expect("an index file is UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an index line is JSON"))
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn expand_dl(template: &str, name: &str, version: &str) -> String {
    let lower = name.to_lowercase();
    let lowerprefix = index_path(name)
        .strip_suffix(&format!("/{lower}"))
        .expect("an index path ends with the name")
        .to_owned();
    template
        .replace("{crate}", name)
        .replace("{version}", version)
        .replace("{lowerprefix}", &lowerprefix)
}

#[actix_rt::test]
async fn sparse_index_serves_every_sample_and_its_downloads() {
    let (registry, samples) = LocalRegistry::start_with_samples();
    let base = registry.sparse_index_http_url();
    assert_eq!(registry.sparse_index_url(), format!("sparse+{base}"));

    let config = get(&format!("{base}config.json"), None).await;
    assert_eq!(config.status, 200);
    let config: Value = serde_json::from_slice(&config.body).expect("config.json is JSON");
    let dl = config["dl"].as_str().expect("config.json has dl");
    assert!(dl.contains("{crate}") && dl.contains("{version}"), "{dl}");

    // Every published version: its line, and the file at the template's URL.
    for (krate, honest) in [
        (&samples.binary, true),
        (&samples.yanked, true),
        (&samples.library, true),
        (&samples.tampered, false),
    ] {
        let file = get(&format!("{base}{}", index_path(&krate.name)), None).await;
        assert_eq!(file.status, 200, "{}", krate.name);
        let line = lines(&file.body)
            .into_iter()
            .find(|line| line["vers"] == krate.version.as_str())
            .unwrap_or_else(|| panic!("no line for {} {}", krate.name, krate.version));
        assert_eq!(line["name"], krate.name.as_str());
        assert!(line["deps"].is_array() && line["features"].is_object());

        let url = expand_dl(dl, &krate.name, &krate.version);
        assert_eq!(url, registry.dl_url_of(&krate.name, &krate.version));
        let download = get(&url, None).await;
        assert_eq!(download.status, 200, "{url}");
        assert_eq!(
            download.body, krate.bytes,
            "{url} serves the .crate as it is"
        );
        assert_eq!(
            line["cksum"] == sha256(&download.body).as_str(),
            honest,
            "{} {}: cksum {} against the file's {}",
            krate.name,
            krate.version,
            line["cksum"],
            sha256(&download.body)
        );
    }

    let hello = lines(
        &get(&format!("{base}{}", index_path(SAMPLE_BINARY)), None)
            .await
            .body,
    );
    let yanked: Vec<(&str, bool)> = hello
        .iter()
        .map(|l| (l["vers"].as_str().unwrap(), l["yanked"].as_bool().unwrap()))
        .collect();
    assert_eq!(yanked, [("0.1.0", false), ("0.1.1", true)]);

    // Binaries and library: what the packages are.
    assert!(samples.binary.file("src/main.rs").is_some());
    assert!(samples.library.file("src/main.rs").is_none());
    assert!(samples.library.file("src/lib.rs").is_some());
    assert_eq!(samples.library.name, SAMPLE_LIBRARY);
    let library_line = &lines(
        &get(&format!("{base}{}", index_path(SAMPLE_LIBRARY)), None)
            .await
            .body,
    )[0];
    assert_eq!(
        library_line["deps"].as_array().map(Vec::len),
        Some(count_dependencies(&samples.library.manifest())),
        "every dependency of the manifest is in the line: {library_line}"
    );

    // Unknown crates, and a download address the template does not make, are 404.
    assert_eq!(
        get(&format!("{base}no/-s/no-such-crate"), None)
            .await
            .status,
        404
    );
    assert_eq!(get(&format!("{base}3/b/bf-"), None).await.status, 404);
    let untemplated = format!("{}/dl/{SAMPLE_BINARY}/0.1.0/download", registry.base_url());
    assert_eq!(get(&untemplated, None).await.status, 404);

    // Caching: the ETag answers 304 until the file changes.
    let url = format!("{base}{}", index_path(SAMPLE_BINARY));
    let first = get(&url, None).await;
    let etag = first.etag.expect("index files have an ETag");
    let again = get(&url, Some(&etag)).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert!(registry.requests().iter().any(|r| r.path
        == format!("/index/{}", index_path(SAMPLE_BINARY))
        && r.status == 304
        && r.if_none_match.as_deref() == Some(etag.as_str())));

    registry.yank(SAMPLE_BINARY, "0.1.0");
    let changed = get(&url, Some(&etag)).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(lines(&changed.body)[0]["yanked"], true);
    registry.unyank(SAMPLE_BINARY, "0.1.0");
    let back = get(&url, None).await;
    assert_eq!(lines(&back.body)[0]["yanked"], false);
    assert_eq!(back.etag, Some(etag), "the same file, the same ETag");
}

fn count_dependencies(manifest: &toml::Table) -> usize {
    let in_table = |table: &toml::Table| {
        [
            "dependencies",
            "dev-dependencies",
            "build-dependencies",
            "dev_dependencies",
            "build_dependencies",
        ]
        .iter()
        .filter_map(|key| table.get(*key).and_then(toml::Value::as_table))
        .map(toml::Table::len)
        .sum::<usize>()
    };
    in_table(manifest)
        + manifest
            .get("target")
            .and_then(toml::Value::as_table)
            .map(|targets| {
                targets
                    .values()
                    .filter_map(toml::Value::as_table)
                    .map(in_table)
                    .sum()
            })
            .unwrap_or(0)
}

#[test]
fn binary_crates_are_packaged_by_cargo_and_print_their_greeting() {
    let first = CrateFile::binary("bf-greeter", "0.3.0");
    assert_eq!(first, CrateFile::binary("bf-greeter", "0.3.0"), "made once");
    let next = CrateFile::binary("bf-greeter", "0.4.0");
    assert_ne!(first.bytes, next.bytes);
    assert_eq!(next.sha256(), sha256(&next.bytes));

    let manifest = next.manifest();
    assert_eq!(manifest["package"]["name"].as_str(), Some("bf-greeter"));
    assert_eq!(manifest["package"]["version"].as_str(), Some("0.4.0"));
    assert!(
        next.file("Cargo.toml.orig").is_some(),
        "cargo package's own output"
    );

    // The binary prints its greeting: compiled straight from the packaged main.rs.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.rs");
    std::fs::write(&main, next.file("src/main.rs").unwrap()).unwrap();
    let exe = dir.path().join("greeter");
    let rustc = Command::new("rustc")
        .arg(&main)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        rustc.status.success(),
        "{}",
        String::from_utf8_lossy(&rustc.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert_eq!(
        String::from_utf8(run.stdout).unwrap().trim_end(),
        binary_greeting("bf-greeter", "0.4.0")
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn git_index_clones_and_fetches_over_dumb_and_smart_http() {
    let (registry, _samples) = LocalRegistry::start_with_samples();
    let dir = tempfile::tempdir().unwrap();
    let dumb = dir.path().join("dumb");
    let smart = dir.path().join("smart");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            &registry.git_index_url(),
            dumb.to_str().unwrap(),
        ],
    );
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            &registry.git_smart_index_url(),
            smart.to_str().unwrap(),
        ],
    );

    let requests = registry.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.starts_with("/git/index/objects/") && r.status == 200),
        "the dumb clone read objects one by one: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.path == "/smart-git/index/git-upload-pack"),
        "the smart clone asked upload-pack: {requests:?}"
    );

    for clone in [&dumb, &smart] {
        assert_eq!(
            git(clone, &["rev-parse", "HEAD"]).trim(),
            registry.git_head()
        );
        for name in [SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED] {
            assert_eq!(
                std::fs::read_to_string(clone.join(index_path(name))).unwrap(),
                registry.index_file(name).unwrap(),
                "the git index and the sparse index agree on {name}"
            );
        }
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(clone.join("config.json")).unwrap())
                .unwrap();
        assert!(config["dl"].as_str().unwrap().contains("/dl/"));
    }
    // One commit per change: config.json, four publications and a yank.
    assert_eq!(git(&dumb, &["rev-list", "--count", "HEAD"]).trim(), "6");

    let before = registry.git_head();
    registry.publish(&CrateFile::binary(SAMPLE_BINARY, "0.2.0"));
    assert_ne!(registry.git_head(), before);
    let path = index_path(SAMPLE_BINARY);
    for clone in [&dumb, &smart] {
        git(clone, &["fetch", "-q"]);
        assert_eq!(
            git(clone, &["rev-parse", "origin/main"]).trim(),
            registry.git_head()
        );
        let file = git(clone, &["show", &format!("origin/main:{path}")]);
        assert_eq!(file, registry.index_file(SAMPLE_BINARY).unwrap());
        assert_eq!(lines(file.as_bytes()).last().unwrap()["vers"], "0.2.0");
        let changed = git(clone, &["diff", "--name-only", "HEAD", "origin/main"]);
        assert_eq!(changed.trim(), path);
    }
}

/// `cargo fetch` in a project of its own that depends on `dependency` (a line of
/// `[dependencies]`), with a `CARGO_HOME` of its own naming the registry's two indexes.
fn cargo_fetch(registry: &LocalRegistry, home: &Path, name: &str, dependency: &str) -> Output {
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[registries.local]\nindex = \"{}\"\n\n[registries.local-git]\nindex = \"{}\"\n\n\
             [net]\nretry = 0\n",
            registry.sparse_index_url(),
            registry.git_smart_index_url()
        ),
    )
    .unwrap();
    let project = home.join(name);
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{dependency}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    cargo_command()
        .arg("fetch")
        .current_dir(&project)
        .env("CARGO_HOME", home)
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("running cargo fetch")
}

fn locked_checksum(home: &Path, project: &str, package: &str) -> String {
    let lock: toml::Table = std::fs::read_to_string(home.join(project).join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let packages = lock["package"].as_array().unwrap();
    let locked = packages
        .iter()
        .find(|p| p["name"].as_str() == Some(package))
        .unwrap_or_else(|| panic!("{package} is not in the lock file: {lock}"));
    assert_eq!(locked["version"].as_str(), Some("0.1.0"), "0.1.1 is yanked");
    locked["checksum"].as_str().unwrap().to_owned()
}

#[test]
fn cargo_resolves_downloads_and_verifies_from_both_indexes() {
    let (registry, samples) = LocalRegistry::start_with_samples();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let sparse = cargo_fetch(
        &registry,
        home,
        "uses-sparse",
        &format!("{SAMPLE_BINARY} = {{ version = \"0.1\", registry = \"local\" }}"),
    );
    assert!(sparse.status.success(), "{}", stderr(&sparse));
    assert_eq!(
        locked_checksum(home, "uses-sparse", SAMPLE_BINARY),
        samples.binary.sha256()
    );
    let dl_path = format!(
        "/dl/{}",
        registry
            .dl_url_of(SAMPLE_BINARY, "0.1.0")
            .split("/dl/")
            .nth(1)
            .unwrap()
    );
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path == dl_path && r.status == 200),
        "cargo downloaded the .crate from the dl template"
    );

    let git = cargo_fetch(
        &registry,
        home,
        "uses-git",
        &format!("{SAMPLE_BINARY} = {{ version = \"0.1\", registry = \"local-git\" }}"),
    );
    assert!(git.status.success(), "{}", stderr(&git));
    assert_eq!(
        locked_checksum(home, "uses-git", SAMPLE_BINARY),
        samples.binary.sha256()
    );

    let tampered = cargo_fetch(
        &registry,
        home,
        "uses-tampered",
        &format!("{SAMPLE_TAMPERED} = {{ version = \"1\", registry = \"local\" }}"),
    );
    assert!(
        !tampered.status.success(),
        "a wrong cksum must fail the download"
    );
    assert!(
        stderr(&tampered).contains("checksum"),
        "cargo names the checksum: {}",
        stderr(&tampered)
    );

    let yanked = cargo_fetch(
        &registry,
        home,
        "uses-yanked",
        &format!("{SAMPLE_BINARY} = {{ version = \"=0.1.1\", registry = \"local\" }}"),
    );
    assert!(!yanked.status.success(), "a yanked version is not resolved");
    assert!(
        stderr(&yanked).contains("yanked"),
        "cargo says why: {}",
        stderr(&yanked)
    );
}

/// A plain `GET` with `Connection: close`: the status and the body, checked against its
/// `Content-Length`.
fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = std::str::from_utf8(&answer[..split])
        .unwrap()
        .to_ascii_lowercase();
    let body = answer[split + 4..].to_vec();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "the whole body, then the close");
    (head[9..12].parse().unwrap(), body)
}

#[test]
fn readers_during_changes_see_whole_files() {
    let (registry, _samples) = LocalRegistry::start_with_samples();
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("clone");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            &registry.git_index_url(),
            clone.to_str().unwrap(),
        ],
    );
    let path = index_path(SAMPLE_BINARY);
    let sparse_path = format!("/index/{path}");
    let changes = 20;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut sparse_reads, mut git_reads) = (0, 0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..changes {
                registry.yank(SAMPLE_BINARY, "0.1.0");
                registry.unyank(SAMPLE_BINARY, "0.1.0");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            for _ in 0..10 {
                let (status, body) = raw_get(registry.addr(), &sparse_path);
                assert_eq!(status, 200);
                assert_eq!(lines(&body).len(), 2, "every line whole, none missing");
                sparse_reads += 1;
            }
            git(&clone, &["fetch", "-q"]);
            let file = git(&clone, &["show", &format!("origin/main:{path}")]);
            assert_eq!(lines(file.as_bytes()).len(), 2);
            git_reads += 1;
        }
    });
    assert!(sparse_reads >= 10 && git_reads >= 1);
    // Every change is its own commit: six at the start, then two per round.
    git(&clone, &["fetch", "-q"]);
    assert_eq!(
        git(&clone, &["rev-list", "--count", "origin/main"]).trim(),
        (6 + 2 * changes).to_string()
    );
}
