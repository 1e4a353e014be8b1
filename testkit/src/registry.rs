//! A Cargo registry of a test's own on `127.0.0.1`, for the registry follower's tests: the
//! same index served twice, as a sparse index (RFC 2789) and as a git index, plus the
//! `.crate` downloads, all from one small HTTP/1.1 server on a thread of its own.
//!
//! **Layout** (`P` is the port; every address is also a method of [`LocalRegistry`]):
//! - `http://127.0.0.1:P/index/`: the sparse index: `config.json` and one file per crate at
//!   its index path (`1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd`, lowercased), one JSON line per
//!   version; unknown crates are 404. Each answer has an `ETag`, and a request whose
//!   `If-None-Match` names it gets `304 Not Modified` (no `Last-Modified`).
//! - `http://127.0.0.1:P/git/index`: the git index (the same files plus `config.json`, one
//!   commit per change on `main`) over git's *dumb* HTTP protocol: the repository's files as
//!   they are, kept current by `git update-server-info`. The git CLI clones and fetches it;
//!   libgit2 (so Cargo's built-in git) and gitoxide speak the smart protocol only, hence:
//! - `http://127.0.0.1:P/smart-git/index`: the same repository through `git http-backend`
//!   (smart HTTP, CGI), for clients that need it.
//! - `http://127.0.0.1:P/dl/…`: the `.crate` files, at `config.json`'s `dl` template
//!   `…/dl/{lowerprefix}/{crate}/{crate}-{version}.crate`; a client that ignores the
//!   template's markers and appends `/{crate}/{version}/download` gets 404.
//!
//! `config.json` has no `api`: there is no web API (so no `cargo publish`); Cargo's
//! resolution and downloads need only `dl`.
//!
//! **Changes** ([`LocalRegistry::publish`], [`LocalRegistry::publish_with_wrong_cksum`],
//! [`LocalRegistry::yank`], [`LocalRegistry::unyank`]) are serialised. Each one makes the
//! `.crate` downloadable first, then commits the index file to git (a reader of the git index
//! sees the old commit or the new one, never a half-written file: git writes objects before
//! it moves the ref, and `update-server-info` replaces `info/refs` by a rename), then swaps
//! the sparse file in memory, so a sparse reader gets the old file or the new one whole.
//! When the call returns, both indexes show the change.
//!
//! **Crates** ([`CrateFile`]) are real `.crate` files: from the local cargo cache
//! ([`CrateFile::from_cargo_cache`]; the workspace depends on `itoa`, a library-only crate,
//! so a build leaves it there), or a tiny binary crate packaged by the real
//! `cargo package` ([`CrateFile::binary`]), any name and version, made once per process.
//! Index lines are made from the package's own normalized `Cargo.toml` (dependencies,
//! features, `links`, `rust-version`), as `cargo publish` would.
//!
//! The API is synchronous and blocks (git runs as a process, `cargo package` takes about a
//! second the first time): from an async test on a single-threaded runtime, make the
//! [`CrateFile`]s before starting the system under test, or call through `spawn_blocking`.
//! The server has its own thread and runtime, so any test (sync, tokio or actix) can use it.
//!
//! A follower test, in outline:
//!
//! ```no_run
//! use buildfleet_testkit::registry::{CrateFile, LocalRegistry, SAMPLE_BINARY};
//!
//! let (registry, samples) = LocalRegistry::start_with_samples();
//! let next = CrateFile::binary(SAMPLE_BINARY, "0.2.0"); // before the system starts
//! // … start the system, following registry.sparse_index_url() or git_index_url() …
//! registry.publish(&next);
//! // … the system queues 0.2.0 once, skips the yanked 0.1.1, refuses samples.tampered;
//! // registry.requests() shows what it asked for, 304s included.
//! ```
//!
//! Test code: it panics on every failure.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The index URL that dependencies from crates.io carry in an index line of another
/// registry, as `cargo publish` writes it.
pub const CRATES_IO_INDEX: &str = "https://github.com/rust-lang/crates.io-index";

/// The binary sample crate of [`LocalRegistry::start_with_samples`].
pub const SAMPLE_BINARY: &str = "bf-hello";

/// The sample crate whose index line has a wrong `cksum`.
pub const SAMPLE_TAMPERED: &str = "bf-tampered";

/// The library-only sample crate, from the local cargo cache.
pub const SAMPLE_LIBRARY: &str = "itoa";

/// The line a binary crate made by [`CrateFile::binary`] prints when run.
pub fn binary_greeting(name: &str, version: &str) -> String {
    format!("hello from {name} {version}")
}

/// The path of a crate's file in an index, relative to its root: `1/a`, `2/ab`, `3/a/abc`,
/// `ab/cd/abcd`, lowercased.
pub fn index_path(name: &str) -> String {
    let lower = name.to_lowercase();
    format!("{}/{lower}", lower_prefix(&lower))
}

/// The `{lowerprefix}` of a crate name: its index path without the file name.
fn lower_prefix(lower: &str) -> String {
    match lower.len() {
        0 => panic!("a crate name is never empty"),
        1 => "1".to_owned(),
        2 => "2".to_owned(),
        3 => format!("3/{}", &lower[..1]),
        _ => format!("{}/{}", &lower[..2], &lower[2..4]),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while publishing must not take the server down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- crates ----

/// A real `.crate` file (a gzipped tar of `<name>-<version>/…` with a normalized
/// `Cargo.toml`), as a registry serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateFile {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

impl CrateFile {
    /// The SHA-256 of the file, lowercase hex: what an honest index line has as `cksum`.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    /// `<name>-<version>.crate` from the local cargo cache
    /// (`$CARGO_HOME/registry/cache/*/`, `CARGO_HOME` defaulting to `~/.cargo`).
    pub fn from_cargo_cache(name: &str, version: &str) -> CrateFile {
        let file_name = format!("{name}-{version}.crate");
        let found = cargo_cache_dirs()
            .into_iter()
            .map(|dir| dir.join(&file_name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{file_name} is not in the cargo cache under {}; versions there: {:?}",
                    cargo_home().display(),
                    CrateFile::cached_versions(name)
                )
            });
        let bytes =
            std::fs::read(&found).unwrap_or_else(|e| panic!("reading {}: {e}", found.display()));
        CrateFile {
            name: name.to_owned(),
            version: version.to_owned(),
            bytes,
        }
    }

    /// The versions of `name` in the local cargo cache, oldest first.
    pub fn cached_versions(name: &str) -> Vec<String> {
        let prefix = format!("{name}-");
        let mut versions: Vec<String> = cargo_cache_dirs()
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|file| {
                let version = file.strip_prefix(&prefix)?.strip_suffix(".crate")?;
                // `itoa-foo-1.0.0.crate` is another crate's.
                version
                    .starts_with(|c: char| c.is_ascii_digit())
                    .then(|| version.to_owned())
            })
            .collect();
        versions.sort_by_key(|v| version_order(v));
        versions.dedup();
        versions
    }

    /// The newest version of `name` in the local cargo cache (see [`Self::from_cargo_cache`]).
    pub fn latest_from_cargo_cache(name: &str) -> CrateFile {
        let versions = CrateFile::cached_versions(name);
        let latest = versions.last().unwrap_or_else(|| {
            panic!(
                "no {name} crate in the cargo cache under {} (build the workspace first)",
                cargo_home().display()
            )
        });
        CrateFile::from_cargo_cache(name, latest)
    }

    /// A tiny crate with one binary (`src/main.rs` prints [`binary_greeting`]) and no
    /// dependencies, packaged by the real `cargo package --offline --allow-dirty
    /// --no-verify` in a temporary directory. Made once per name and version per process,
    /// so the same call returns the same bytes.
    pub fn binary(name: &str, version: &str) -> CrateFile {
        static MADE: OnceLock<Mutex<HashMap<(String, String), CrateFile>>> = OnceLock::new();
        let made = MADE.get_or_init(Default::default);
        let key = (name.to_owned(), version.to_owned());
        if let Some(krate) = lock(made).get(&key) {
            return krate.clone();
        }
        // Packaged outside the lock: two tests making different crates need not wait.
        let krate = package_binary_crate(name, version);
        lock(made).entry(key).or_insert(krate).clone()
    }

    /// The package's normalized `Cargo.toml`.
    pub fn manifest(&self) -> toml::Table {
        let text = self
            .file("Cargo.toml")
            .unwrap_or_else(|| panic!("{}-{} has no Cargo.toml", self.name, self.version));
        let text = String::from_utf8(text).expect("Cargo.toml is UTF-8");
        text.parse()
            .unwrap_or_else(|e| panic!("{}-{}'s Cargo.toml: {e}", self.name, self.version))
    }

    /// A file of the package (`src/main.rs`), by its path inside `<name>-<version>/`.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let wanted = Path::new(&format!("{}-{}", self.name, self.version)).join(path);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&self.bytes[..]));
        for entry in archive.entries().expect("reading the .crate archive") {
            let mut entry = entry.expect("a .crate archive entry");
            if entry.path().expect("an entry path") == wanted {
                let mut contents = Vec::new();
                entry
                    .read_to_end(&mut contents)
                    .expect("reading a .crate entry");
                return Some(contents);
            }
        }
        None
    }

    /// The index line of this version with the given `cksum`, from its manifest, as
    /// `cargo publish` makes it. Dependencies that name no `registry-index` are taken to be
    /// from crates.io (where the cache's crates come from) and carry [`CRATES_IO_INDEX`].
    pub fn index_line(&self, cksum: &str) -> Value {
        let manifest = self.manifest();
        let package = manifest
            .get("package")
            .and_then(toml::Value::as_table)
            .expect("a [package] table");
        assert_eq!(
            package.get("name").and_then(toml::Value::as_str),
            Some(self.name.as_str()),
            "the manifest names another crate"
        );
        assert_eq!(
            package.get("version").and_then(toml::Value::as_str),
            Some(self.version.as_str()),
            "the manifest has another version"
        );

        let mut deps = Vec::new();
        index_deps(&manifest, None, &mut deps);
        if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
            for (target, table) in targets {
                let table = table.as_table().expect("a [target.…] table");
                index_deps(table, Some(target), &mut deps);
            }
        }

        // Namespaced (`dep:`) and weak (`?/`) features go to `features2`, which old Cargo
        // versions skip, and make the line `v: 2`.
        let mut features = BTreeMap::new();
        let mut features2 = BTreeMap::new();
        if let Some(table) = manifest.get("features").and_then(toml::Value::as_table) {
            for (feature, enables) in table {
                let enables: Vec<String> = enables
                    .as_array()
                    .expect("a feature is an array")
                    .iter()
                    .map(|v| v.as_str().expect("a feature value").to_owned())
                    .collect();
                if enables
                    .iter()
                    .any(|v| v.starts_with("dep:") || v.contains("?/"))
                {
                    features2.insert(feature.clone(), enables);
                } else {
                    features.insert(feature.clone(), enables);
                }
            }
        }

        let mut line = json!({
            "name": self.name,
            "vers": self.version,
            "deps": deps,
            "cksum": cksum,
            "features": features,
            "yanked": false,
            "links": package.get("links").and_then(toml::Value::as_str),
            "v": if features2.is_empty() { 1 } else { 2 },
        });
        if !features2.is_empty() {
            line["features2"] = json!(features2);
        }
        if let Some(rust_version) = package.get("rust-version").and_then(toml::Value::as_str) {
            line["rust_version"] = json!(rust_version);
        }
        line
    }
}

/// The dependency tables of a manifest or of one `[target.<cfg>]` table, as index `deps`.
fn index_deps(table: &toml::Table, target: Option<&str>, deps: &mut Vec<Value>) {
    for (key, kind) in [
        ("dependencies", "normal"),
        ("dev-dependencies", "dev"),
        ("dev_dependencies", "dev"),
        ("build-dependencies", "build"),
        ("build_dependencies", "build"),
    ] {
        let Some(entries) = table.get(key).and_then(toml::Value::as_table) else {
            continue;
        };
        for (name, spec) in entries {
            let dep = match spec {
                toml::Value::String(req) => json!({
                    "name": name, "req": req, "features": [], "optional": false,
                    "default_features": true, "target": target, "kind": kind,
                    "registry": CRATES_IO_INDEX,
                }),
                toml::Value::Table(spec) => {
                    let string = |k: &str| spec.get(k).and_then(toml::Value::as_str);
                    let flag = |k: &str| spec.get(k).and_then(toml::Value::as_bool);
                    let features: Vec<&str> = spec
                        .get("features")
                        .and_then(toml::Value::as_array)
                        .map(|list| list.iter().filter_map(toml::Value::as_str).collect())
                        .unwrap_or_default();
                    let mut dep = json!({
                        "name": name,
                        "req": string("version").unwrap_or("*"),
                        "features": features,
                        "optional": flag("optional").unwrap_or(false),
                        "default_features": flag("default-features")
                            .or_else(|| flag("default_features"))
                            .unwrap_or(true),
                        "target": target,
                        "kind": kind,
                        "registry": string("registry-index").unwrap_or(CRATES_IO_INDEX),
                    });
                    if let Some(package) = string("package") {
                        dep["package"] = json!(package);
                    }
                    dep
                }
                other => panic!("dependency {name} is neither a string nor a table: {other}"),
            };
            deps.push(dep);
        }
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .expect("CARGO_HOME or HOME")
}

/// `$CARGO_HOME/registry/cache/*/`, one directory per registry Cargo has downloaded from.
fn cargo_cache_dirs() -> Vec<PathBuf> {
    let cache = cargo_home().join("registry").join("cache");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.path()))
                .filter(|path| path.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// A sort key for versions: numeric `major.minor.patch`, a pre-release before its release;
/// enough to pick the newest of a crate's cached versions.
fn version_order(version: &str) -> (Vec<u64>, bool, String) {
    let version = version.split('+').next().unwrap_or(version);
    let (release, pre) = match version.split_once('-') {
        Some((release, pre)) => (release, Some(pre)),
        None => (version, None),
    };
    let numbers = release
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    (numbers, pre.is_none(), pre.unwrap_or_default().to_owned())
}

fn package_binary_crate(name: &str, version: &str) -> CrateFile {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
    };
    assert!(
        plain(name) && plain(version),
        "crate name {name:?} or version {version:?} has characters a manifest would need quoted"
    );
    let dir = tempfile::tempdir().expect("temp dir for a binary crate");
    std::fs::create_dir(dir.path().join("src")).expect("creating src/");
    // `[workspace]`: the package is a workspace of its own, whatever lies above the temp dir.
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n\
         description = \"A binary crate made by the Buildfleet test kit\"\n\
         license = \"MIT OR Apache-2.0\"\n\n[workspace]\n"
    );
    std::fs::write(dir.path().join("Cargo.toml"), manifest).expect("writing Cargo.toml");
    let main = format!(
        "fn main() {{\n    println!(\"{}\");\n}}\n",
        binary_greeting(name, version)
    );
    std::fs::write(dir.path().join("src/main.rs"), main).expect("writing src/main.rs");

    let target_dir = dir.path().join("target");
    let output = cargo_command()
        .args([
            "package",
            "--offline",
            "--allow-dirty",
            "--no-verify",
            "--quiet",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running cargo package");
    assert!(
        output.status.success(),
        "cargo package of {name} {version} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir
        .join("package")
        .join(format!("{name}-{version}.crate"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    CrateFile {
        name: name.to_owned(),
        version: version.to_owned(),
        bytes,
    }
}

/// The cargo that runs the tests (`CARGO`), else the one on `PATH`.
pub fn cargo_command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

// ---- the registry ----

/// One request the registry's server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    pub if_none_match: Option<String>,
    pub status: u16,
}

/// The crates [`LocalRegistry::start_with_samples`] publishes.
#[derive(Clone, Debug)]
pub struct Samples {
    /// [`SAMPLE_BINARY`] 0.1.0: a binary crate, published honestly.
    pub binary: CrateFile,
    /// [`SAMPLE_BINARY`] 0.1.1: published, then yanked.
    pub yanked: CrateFile,
    /// [`SAMPLE_LIBRARY`] (the newest cached version): library-only, published honestly.
    pub library: CrateFile,
    /// [`SAMPLE_TAMPERED`] 1.0.0: a binary crate whose index line's `cksum` is not its
    /// file's SHA-256 (another crate, so resolving [`SAMPLE_BINARY`] never meets it).
    pub tampered: CrateFile,
}

/// A registry served on `127.0.0.1` (see the module documentation). Dropping it stops the
/// server and deletes its files.
pub struct LocalRegistry {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

struct Shared {
    /// The git work tree; the repository is its `.git`, and its parent is the
    /// `GIT_PROJECT_ROOT` of `git http-backend`.
    work_tree: PathBuf,
    /// Held through a whole change, so changes are serialised: crate (lowercased name) →
    /// its index lines in publication order.
    index: Mutex<BTreeMap<String, Vec<Value>>>,
    /// What the server answers with, swapped whole per change.
    served: Mutex<Served>,
    requests: Mutex<Vec<RegistryRequest>>,
}

#[derive(Default)]
struct Served {
    /// Sparse index path (`config.json`, `3/a/abc`) → file.
    index: HashMap<String, Bytes>,
    /// Path under `/dl/` → `.crate` file.
    downloads: HashMap<String, Bytes>,
}

/// The directory name of the repository under the project root; the last segment of both
/// git URLs.
const REPOSITORY: &str = "index";

impl LocalRegistry {
    /// An empty registry (only `config.json`, in one commit), serving on a free port of
    /// `127.0.0.1`.
    pub fn start() -> LocalRegistry {
        let dir = tempfile::tempdir().expect("temp dir for a registry");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the registry");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the registry's address");

        let work_tree = dir.path().join(REPOSITORY);
        std::fs::create_dir(&work_tree).expect("creating the git work tree");
        // No templates: no sample hooks. No automatic gc or maintenance: objects stay
        // loose, so every commit is visible to dumb clients at once and nothing repacks
        // under a reader.
        git(&work_tree, &["init", "-q", "-b", "main", "--template="]);
        for (key, value) in [
            ("gc.auto", "0"),
            ("maintenance.auto", "false"),
            ("commit.gpgsign", "false"),
            ("http.receivepack", "false"),
        ] {
            git(&work_tree, &["config", key, value]);
        }

        let shared = Arc::new(Shared {
            work_tree,
            index: Mutex::new(BTreeMap::new()),
            served: Mutex::new(Served::default()),
            requests: Mutex::new(Vec::new()),
        });
        let config = serde_json::to_string_pretty(&json!({
            "dl": format!("http://{addr}/dl/{{lowerprefix}}/{{crate}}/{{crate}}-{{version}}.crate"),
        }))
        .expect("config.json")
            + "\n";
        {
            let _index = lock(&shared.index);
            shared.commit("config.json", &config, "Create config.json");
            lock(&shared.served)
                .index
                .insert("config.json".to_owned(), Bytes::from(config));
        }

        let (stop, stopped) = oneshot::channel();
        let server = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("local-registry".to_owned())
                .spawn(move || serve(listener, shared, stopped))
                .expect("starting the registry's thread")
        };
        LocalRegistry {
            shared,
            addr,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    /// A registry with every kind of version the follower must handle (see [`Samples`]):
    /// a binary crate, a yanked version, a library-only crate from the cargo cache and a
    /// version whose `cksum` does not match its file.
    pub fn start_with_samples() -> (LocalRegistry, Samples) {
        let samples = Samples {
            binary: CrateFile::binary(SAMPLE_BINARY, "0.1.0"),
            yanked: CrateFile::binary(SAMPLE_BINARY, "0.1.1"),
            library: CrateFile::latest_from_cargo_cache(SAMPLE_LIBRARY),
            tampered: CrateFile::binary(SAMPLE_TAMPERED, "1.0.0"),
        };
        let registry = LocalRegistry::start();
        registry.publish(&samples.binary);
        registry.publish(&samples.yanked);
        registry.yank(SAMPLE_BINARY, "0.1.1");
        registry.publish(&samples.library);
        registry.publish_with_wrong_cksum(&samples.tampered);
        (registry, samples)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:P`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `sparse+http://127.0.0.1:P/index/`, as Cargo's configuration takes it.
    pub fn sparse_index_url(&self) -> String {
        format!("sparse+{}", self.sparse_index_http_url())
    }

    /// `http://127.0.0.1:P/index/`: the sparse index's base for a plain HTTP client.
    pub fn sparse_index_http_url(&self) -> String {
        format!("http://{}/index/", self.addr)
    }

    /// `http://127.0.0.1:P/git/index`: the git index over the dumb HTTP protocol (the git
    /// CLI clones and fetches it).
    pub fn git_index_url(&self) -> String {
        format!("http://{}/git/{REPOSITORY}", self.addr)
    }

    /// `http://127.0.0.1:P/smart-git/index`: the same repository over smart HTTP (`git
    /// http-backend`), for libgit2 (Cargo) and gitoxide.
    pub fn git_smart_index_url(&self) -> String {
        format!("http://{}/smart-git/{REPOSITORY}", self.addr)
    }

    /// Where a version's `.crate` is downloaded from: `config.json`'s `dl` template filled
    /// in.
    pub fn dl_url_of(&self, name: &str, version: &str) -> String {
        format!("http://{}/dl/{}", self.addr, download_path(name, version))
    }

    /// The git repository itself (its `.git` directory), for `git` commands of a test's
    /// own.
    pub fn git_dir(&self) -> PathBuf {
        self.shared.work_tree.join(".git")
    }

    /// The commit `main` points at.
    pub fn git_head(&self) -> String {
        let _index = lock(&self.shared.index);
        git(&self.shared.work_tree, &["rev-parse", "HEAD"])
            .trim()
            .to_owned()
    }

    /// The sparse index file of a crate as served now, if the crate has one.
    pub fn index_file(&self, name: &str) -> Option<String> {
        let file = lock(&self.shared.served)
            .index
            .get(&index_path(name))
            .cloned()?;
        Some(String::from_utf8(file.to_vec()).expect("index files are UTF-8"))
    }

    /// Publishes a version: its `.crate` at [`Self::dl_url_of`], its line (with the file's
    /// SHA-256 as `cksum`) appended to the crate's index file in both indexes. Returns the
    /// line. Panics if the version is there already.
    pub fn publish(&self, krate: &CrateFile) -> Value {
        self.add_version(krate, krate.sha256())
    }

    /// Publishes a version whose index line's `cksum` is the SHA-256 of other bytes than
    /// the `.crate` served for it, as a corrupted registry or a swapped file would look.
    /// Returns the line.
    pub fn publish_with_wrong_cksum(&self, krate: &CrateFile) -> Value {
        let mut other = krate.bytes.clone();
        other.extend_from_slice(b" and then some");
        let wrong = sha256_hex(&other);
        assert_ne!(wrong, krate.sha256());
        self.add_version(krate, wrong)
    }

    /// Marks a published version yanked in both indexes (one commit).
    pub fn yank(&self, name: &str, version: &str) {
        self.set_yanked(name, version, true);
    }

    /// Clears a version's `yanked` in both indexes (one commit).
    pub fn unyank(&self, name: &str, version: &str) {
        self.set_yanked(name, version, false);
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RegistryRequest> {
        lock(&self.shared.requests).clone()
    }

    fn add_version(&self, krate: &CrateFile, cksum: String) -> Value {
        let line = krate.index_line(&cksum);
        let mut index = lock(&self.shared.index);
        let lines = index.entry(krate.name.to_lowercase()).or_default();
        if let Some(first) = lines.first() {
            assert_eq!(
                first["name"], krate.name,
                "a crate's name keeps its case across versions"
            );
        }
        assert!(
            !lines.iter().any(|l| l["vers"] == krate.version),
            "{} {} is published already",
            krate.name,
            krate.version
        );
        let message = if lines.is_empty() {
            format!("Create crate `{}#{}`", krate.name, krate.version)
        } else {
            format!("Update crate `{}#{}`", krate.name, krate.version)
        };
        lines.push(line.clone());
        let file = render_index_file(lines);

        // Downloadable before either index names it.
        lock(&self.shared.served).downloads.insert(
            download_path(&krate.name, &krate.version),
            Bytes::from(krate.bytes.clone()),
        );
        let path = index_path(&krate.name);
        self.shared.commit(&path, &file, &message);
        lock(&self.shared.served)
            .index
            .insert(path, Bytes::from(file));
        line
    }

    fn set_yanked(&self, name: &str, version: &str, yanked: bool) {
        let mut index = lock(&self.shared.index);
        let lines = index
            .get_mut(&name.to_lowercase())
            .unwrap_or_else(|| panic!("{name} is not published"));
        let line = lines
            .iter_mut()
            .find(|l| l["vers"] == version)
            .unwrap_or_else(|| panic!("{name} {version} is not published"));
        line["yanked"] = json!(yanked);
        let file = render_index_file(lines);
        let verb = if yanked { "Yank" } else { "Unyank" };
        let path = index_path(name);
        self.shared
            .commit(&path, &file, &format!("{verb} crate `{name}#{version}`"));
        lock(&self.shared.served)
            .index
            .insert(path, Bytes::from(file));
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn render_index_file(lines: &[Value]) -> String {
    lines
        .iter()
        .map(|line| serde_json::to_string(line).expect("an index line") + "\n")
        .collect()
}

/// The path under `/dl/` that `config.json`'s template gives a version.
fn download_path(name: &str, version: &str) -> String {
    format!(
        "{}/{name}/{name}-{version}.crate",
        lower_prefix(&name.to_lowercase())
    )
}

impl Shared {
    /// Writes one file of the index and commits it; the caller holds `index`.
    fn commit(&self, path: &str, contents: &str, message: &str) {
        let file = self.work_tree.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent directory"))
            .expect("creating an index directory");
        std::fs::write(&file, contents).expect("writing an index file");
        git(&self.work_tree, &["add", "--", path]);
        git(&self.work_tree, &["commit", "-q", "-m", message]);
        // The dumb protocol's clients read `info/refs` for where `main` is.
        git(&self.work_tree, &["update-server-info"]);
    }
}

/// A git command in `dir`, isolated from the caller's git environment and configuration
/// (a test run from a git hook has `GIT_DIR` set); returns its standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running git (is it installed?)");
    assert!(
        output.status.success(),
        "git {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git's output is UTF-8")
}

/// `git` with no `GIT_*` variable of the caller's, no system or global configuration, a
/// fixed identity and no prompts: for the registry and for tests that clone it.
pub fn git_command() -> Command {
    let mut command = Command::new("git");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GIT_") {
            command.env_remove(name);
        }
    }
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Buildfleet test registry")
        .env("GIT_AUTHOR_EMAIL", "registry@buildfleet.invalid")
        .env("GIT_COMMITTER_NAME", "Buildfleet test registry")
        .env("GIT_COMMITTER_EMAIL", "registry@buildfleet.invalid");
    command
}

// ---- the HTTP server ----

/// Largest request head and body the server reads; git's requests for this index are a few
/// KiB.
const MAX_HEAD: u64 = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, stopped: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the registry's runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("the registry's listener");
        let accept = async {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = stopped => {}
        }
    });
    // Dropping the runtime cancels the connections still open.
}

struct Request {
    method: String,
    path: String,
    query: Option<String>,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Response {
    fn new(status: u16, content_type: &str, body: Bytes) -> Response {
        Response {
            status,
            reason: reason(status).to_owned(),
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    fn not_found() -> Response {
        Response::new(404, "text/plain", Bytes::from_static(b"not found\n"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match read_request(&mut reader, &mut write).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(_) => {
                let bad = Response::new(400, "text/plain", Bytes::from_static(b"bad request\n"));
                let _ = write_response(&mut write, &bad, false, false).await;
                return;
            }
        };
        let response = respond(&shared, &request).await;
        lock(&shared.requests).push(RegistryRequest {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            if_none_match: request.header("if-none-match").map(str::to_owned),
            status: response.status,
        });
        let head_only = request.method == "HEAD";
        if write_response(&mut write, &response, head_only, request.keep_alive)
            .await
            .is_err()
            || !request.keep_alive
        {
            return;
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// One line of at most `MAX_HEAD` bytes, without its line ending; `None` at end of stream.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_HEAD)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid("line too long or cut"));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("not UTF-8"))
}

async fn read_request<R, W>(reader: &mut R, writer: &mut W) -> std::io::Result<Option<Request>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let request_line = loop {
        match read_line(reader).await? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("request line"));
    };
    let mut headers = Vec::new();
    let mut head_size = request_line.len();
    loop {
        let line = read_line(reader)
            .await?
            .ok_or_else(|| invalid("cut head"))?;
        if line.is_empty() {
            break;
        }
        head_size += line.len();
        if head_size as u64 > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let connection = header("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let chunked =
        header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = match header("content-length") {
        Some(length) => Some(
            length
                .parse::<usize>()
                .map_err(|_| invalid("content-length"))?,
        ),
        None => None,
    };
    if (chunked || length.is_some_and(|l| l > 0))
        && header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        writer.flush().await?;
    }
    let body = if chunked {
        read_chunked(reader).await?
    } else if let Some(length) = length {
        if length > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        body
    } else {
        Vec::new()
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    Ok(Some(Request {
        method: method.to_owned(),
        path,
        query,
        headers,
        body,
        keep_alive,
    }))
}

/// A `Transfer-Encoding: chunked` body (libgit2 sends its smart requests so).
async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)
            .await?
            .ok_or_else(|| invalid("cut chunk"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)
                .await?
                .ok_or_else(|| invalid("cut trailer"))?
                .is_empty()
            {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        if !read_line(reader)
            .await?
            .ok_or_else(|| invalid("cut chunk"))?
            .is_empty()
        {
            return Err(invalid("chunk without its line ending"));
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, response.reason);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if response.status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes()).await?;
    if !head_only && response.status != 304 {
        writer.write_all(&response.body).await?;
    }
    writer.flush().await
}

async fn respond(shared: &Shared, request: &Request) -> Response {
    let smart_prefix = format!("/smart-git/{REPOSITORY}");
    if let Some(rest) = request.path.strip_prefix(&smart_prefix) {
        if rest.is_empty() || rest.starts_with('/') {
            return git_http_backend(shared, request, rest).await;
        }
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Response::new(405, "text/plain", Bytes::from_static(b"GET only\n"));
    }
    if let Some(path) = request.path.strip_prefix("/index/") {
        let file = lock(&shared.served).index.get(path).cloned();
        return match file {
            Some(file) => with_etag(request, file),
            None => Response::not_found(),
        };
    }
    if let Some(path) = request.path.strip_prefix("/dl/") {
        let file = lock(&shared.served).downloads.get(path).cloned();
        return match file {
            Some(file) => Response::new(200, "application/gzip", file),
            None => Response::not_found(),
        };
    }
    if let Some(path) = request.path.strip_prefix(&format!("/git/{REPOSITORY}/")) {
        return dumb_git_file(shared, path).await;
    }
    Response::not_found()
}

/// A sparse index file with its `ETag`, or `304` when the client has it already.
fn with_etag(request: &Request, file: Bytes) -> Response {
    let etag = format!("\"{}\"", &sha256_hex(&file)[..32]);
    let cached = request.header("if-none-match").is_some_and(|tags| {
        tags.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    });
    let mut response = if cached {
        Response::new(304, "application/json", Bytes::new())
    } else {
        Response::new(200, "application/json", file)
    };
    response.headers.push(("ETag".to_owned(), etag));
    response
}

/// A file of the repository as it is on disk: all the dumb HTTP protocol needs.
async fn dumb_git_file(shared: &Shared, path: &str) -> Response {
    let relative = Path::new(path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Response::not_found();
    }
    let file = shared.work_tree.join(".git").join(relative);
    match tokio::fs::read(&file).await {
        Ok(bytes) => Response::new(200, "application/octet-stream", Bytes::from(bytes)),
        Err(_) => Response::not_found(),
    }
}

/// Smart HTTP through `git http-backend`, run as the CGI program it is.
async fn git_http_backend(shared: &Shared, request: &Request, rest: &str) -> Response {
    let project_root = shared
        .work_tree
        .parent()
        .expect("the work tree has a parent");
    let mut command = tokio::process::Command::from(git_command());
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{REPOSITORY}{rest}"))
        .env("REQUEST_METHOD", &request.method)
        .env("QUERY_STRING", request.query.as_deref().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", request.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (header, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = request.header(header) {
            command.env(variable, value);
        }
    }
    let failed = |what: String| {
        Response::new(
            500,
            "text/plain",
            Bytes::from(format!("git http-backend: {what}\n")),
        )
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return failed(e.to_string()),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = request.body.clone();
    // Written beside the read of the answer: a large request and a large answer would
    // otherwise wait on each other's pipes.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = match child.wait_with_output().await {
        Ok(output) => output,
        Err(e) => return failed(e.to_string()),
    };
    let _ = writer.await;
    parse_cgi_output(&output.stdout).unwrap_or_else(|| {
        failed(format!(
            "{} with no CGI answer: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    })
}

/// A CGI answer: headers (`Status:` among them), an empty line, the body.
fn parse_cgi_output(output: &[u8]) -> Option<Response> {
    let (head_end, body_start) = [&b"\r\n\r\n"[..], &b"\n\n"[..]]
        .iter()
        .filter_map(|separator| {
            output
                .windows(separator.len())
                .position(|w| w == *separator)
                .map(|at| (at, at + separator.len()))
        })
        .min()?;
    let head = std::str::from_utf8(&output[..head_end]).ok()?;
    let mut response = Response {
        status: 200,
        reason: "OK".to_owned(),
        headers: Vec::new(),
        body: Bytes::copy_from_slice(&output[body_start..]),
    };
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
            response.status = code.parse().ok()?;
            response.reason = reason.to_owned();
        } else {
            response
                .headers
                .push((name.trim().to_owned(), value.to_owned()));
        }
    }
    Some(response)
}
