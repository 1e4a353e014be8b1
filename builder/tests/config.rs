//! Configuration from flags, environment variables and a TOML file, with clear errors.

use std::io::Write;
use std::path::PathBuf;

use buildfleet_builder::config::{BuilderConfig, Cli, Command, ConfigError, RunArgs, Strategy};
use clap::Parser;

fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
    let mut full = vec!["buildfleet-builder", "run"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(full)?.command {
        Command::Run(args) => Ok(args),
        Command::Keygen(_) => unreachable!("parsed `run`"),
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

const FILE: &str = r#"
backend_url = "wss://builds.example.com/"
key = "/etc/buildfleet/key"
name = "from-file"
max_concurrent_jobs = 3
work_dir = "/var/lib/bf"
offline = true

[labels]
arch = "x86_64"
os = "linux"

[strategy]
kind = "docker"
image = "rust:1"
memory = "4g"
cpus = "1.5"
pids_limit = 256

[limits]
max_unpacked_bytes = 1000000
max_archive_entries = 500

[[recipes]]
name = "hello"
version = "2"
commands = [["sh", "-c", "echo hi > ${BUILDFLEET_OUT}/hello.txt"]]
env = { GREETING = "hi" }
artifacts = [{ name = "hello.txt", path = "hello.txt" }, { name = "all.tar.gz", path = ".", pack = "tar.gz" }]
"#;

#[test]
fn a_full_toml_file_resolves() {
    let file = config_file(FILE);
    let args = parse(&["--config", file.path().to_str().unwrap()]).unwrap();
    let config = args.resolve().unwrap();
    assert_eq!(
        config.connect_urls,
        ["wss://builds.example.com/api/v1/builders/connect"]
    );
    assert_eq!(config.name, "from-file");
    assert_eq!(config.max_concurrent_jobs, 3);
    assert_eq!(
        config.labels.get("arch").map(String::as_str),
        Some("x86_64")
    );
    assert!(config.offline);
    assert_eq!(config.limits.max_archive_entries, 500);
    assert_eq!(
        config.limits.cancel_grace_secs, 5,
        "unset limits keep their defaults"
    );
    let Strategy::Docker(docker) = &config.strategy else {
        panic!("docker strategy expected")
    };
    assert_eq!(
        (
            docker.image.as_deref(),
            docker.memory.as_str(),
            docker.pids_limit
        ),
        (Some("rust:1"), "4g", 256)
    );
    let names: Vec<_> = config
        .recipes
        .capabilities()
        .into_iter()
        .map(|c| format!("{}@{}", c.name, c.version))
        .collect();
    assert_eq!(
        names,
        [
            "cargo-build@1",
            "cargo-doc@1",
            "crate-metadata@1",
            "hello@2"
        ]
    );
}

#[test]
fn flags_override_the_file_and_labels_merge() {
    let file = config_file(FILE);
    let args = parse(&[
        "--config",
        file.path().to_str().unwrap(),
        "--backend-url",
        "ws://127.0.0.1:8000",
        "--name",
        "from-flag",
        "--label",
        "arch=aarch64",
        "--label",
        "gpu=none,tier=2",
        "--max-jobs",
        "8",
        "--strategy",
        "process",
    ])
    .unwrap();
    let config = args.resolve().unwrap();
    assert_eq!(
        config.connect_urls,
        ["ws://127.0.0.1:8000/api/v1/builders/connect"]
    );
    assert_eq!(config.name, "from-flag");
    assert_eq!(config.max_concurrent_jobs, 8);
    assert_eq!(config.strategy, Strategy::Process);
    let labels: Vec<_> = config
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(labels, ["arch=aarch64", "gpu=none", "os=linux", "tier=2"]);
}

/// Several replicas: a comma-separated flag, a repeated flag or a TOML list, dialed in the
/// order given, each once; one bad URL of the list is named.
#[test]
fn several_backend_urls_resolve_in_order() {
    let base = ["--key", "/k", "--name", "b1"];
    let replicas = [
        "ws://a:8000/api/v1/builders/connect",
        "ws://b:8000/api/v1/builders/connect",
        "wss://c/bf/api/v1/builders/connect",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--backend-url",
        "ws://a:8000, ws://b:8000,,wss://c/bf/,ws://a:8000",
    ]);
    assert_eq!(
        parse(&args).unwrap().resolve().unwrap().connect_urls,
        replicas
    );

    let mut args = base.to_vec();
    args.extend([
        "--backend-url",
        "ws://a:8000",
        "--backend-url",
        "ws://b:8000",
        "--backend-url",
        "wss://c/bf",
    ]);
    assert_eq!(
        parse(&args).unwrap().resolve().unwrap().connect_urls,
        replicas
    );

    let file = config_file(
        r#"backend_url = ["ws://a:8000", "ws://b:8000", "wss://c/bf"]
key = "/k"
name = "b1"
"#,
    );
    let args = parse(&["--config", file.path().to_str().unwrap()]).unwrap();
    assert_eq!(args.resolve().unwrap().connect_urls, replicas);

    let mut args = base.to_vec();
    args.extend(["--backend-url", "ws://a:8000,http://b:8000"]);
    let err = parse(&args).unwrap().resolve().unwrap_err();
    assert!(
        matches!(&err, ConfigError::BackendUrl { url, .. } if url == "http://b:8000"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--backend-url", " , "]);
    let err = parse(&args).unwrap().resolve().unwrap_err();
    assert!(err.to_string().contains("BUILDFLEET_BACKEND_URL"), "{err}");
}

fn resolve_err(args: &[&str]) -> ConfigError {
    parse(args).unwrap().resolve().unwrap_err()
}

#[test]
fn bad_values_give_clear_errors() {
    let base = ["--key", "/k", "--name", "b1"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };

    let err = resolve_err(&with(&["--backend-url", "http://127.0.0.1:8000"]));
    assert!(err.to_string().contains("ws:// or wss://"), "{err}");
    let err = resolve_err(&with(&["--backend-url", "ws://"]));
    assert!(err.to_string().contains("no host"), "{err}");
    let err = resolve_err(&["--key", "/k"]);
    assert!(err.to_string().contains("BUILDFLEET_BACKEND_URL"), "{err}");
    let err = resolve_err(&with(&["--backend-url", "ws://h", "--label", "novalue"]));
    assert!(err.to_string().contains("key=value"), "{err}");
    let err = resolve_err(&with(&["--backend-url", "ws://h", "--max-jobs", "0"]));
    assert!(matches!(err, ConfigError::MaxJobs(0)), "{err}");
    let err = resolve_err(&[
        "--backend-url",
        "ws://h",
        "--key",
        "/k",
        "--name",
        "bad name!",
    ]);
    assert!(err.to_string().contains("invalid builder name"), "{err}");
    let err = resolve_err(&with(&["--backend-url", "ws://h", "--strategy", "docker"]));
    assert!(matches!(err, ConfigError::DockerImage), "{err}");
    assert!(
        parse(&["--strategy", "vm"]).is_err(),
        "clap refuses unknown strategies"
    );
    assert!(parse(&["--max-jobs", "many"]).is_err());
}

#[test]
fn bad_files_give_clear_errors() {
    let file =
        config_file("backend_url = \"ws://h\"\nkey = \"/k\"\nname = \"b\"\nunknown_field = 1\n");
    let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
    assert!(
        matches!(err, ConfigError::ParseFile { .. }) && err.to_string().contains("unknown_field"),
        "{err}"
    );

    let missing = resolve_err(&["--config", "/nonexistent/buildfleet.toml"]);
    assert!(
        missing.to_string().contains("cannot read config file"),
        "{missing}"
    );

    let recipes = [
        ("commands = []", "`commands` is empty"),
        (
            "commands = [[\"true\"]]\nartifacts = [{ name = \".hidden\", path = \"x\" }]",
            "must not start with '.'",
        ),
        (
            "commands = [[\"true\"]]\nartifacts = [{ name = \"x\", path = \"../x\" }]",
            "without '..'",
        ),
        (
            "commands = [[\"true\"]]\nenv = { \"BAD-NAME\" = \"1\" }",
            "not a valid variable name",
        ),
        (
            "commands = [[\"true\"]]\nartifacts = [{ name = \"x\", path = \"x\", pack = \"zip\" }]",
            "unknown variant",
        ),
    ];
    for (body, expected) in recipes {
        let text = format!("backend_url = \"ws://h\"\nkey = \"/k\"\nname = \"b\"\n[[recipes]]\nname = \"r\"\nversion = \"1\"\n{body}\n");
        let file = config_file(&text);
        let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
        assert!(err.to_string().contains(expected), "{body}: {err}");
    }

    let text = "backend_url = \"ws://h\"\nkey = \"/k\"\nname = \"b\"\n[strategy]\nkind = \"docker\"\nimage = \"x\"\nmemory = \"lots\"\n";
    let file = config_file(text);
    let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
    assert!(err.to_string().contains("memory"), "{err}");
}

/// Builds run with their job directory as working directory, so every path the builder was
/// given relative to where it started must be resolved then (the README's first build
/// failed with a relative work dir: the build wrote its output beside the wrong directory).
#[test]
fn relative_paths_resolve_against_the_working_directory_at_start() {
    let cwd = std::env::current_dir().unwrap();
    let config = parse(&[
        "--backend-url",
        "ws://127.0.0.1:8000",
        "--name",
        "relative",
        "--key",
        "keys/id_ed25519",
        "--work-dir",
        "work",
        "--ca-cert",
        "tls/ca.pem",
    ])
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(config.key_path, cwd.join("keys/id_ed25519"));
    assert_eq!(config.work_dir, cwd.join("work"));
    assert_eq!(config.ca_cert, Some(cwd.join("tls/ca.pem")));

    // The same from the file; a bare docker binary name stays a PATH lookup.
    let file = config_file(
        "backend_url = \"ws://127.0.0.1:8000\"\nname = \"relative\"\nkey = \"k/id\"\n\
         work_dir = \"./w\"\nca_cert = \"ca.pem\"\n\
         [strategy]\nkind = \"docker\"\nimage = \"rust:1\"\ndocker_bin = \"bin/docker\"\n",
    );
    let config = parse(&["--config", file.path().to_str().unwrap()])
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(config.key_path, cwd.join("k/id"));
    assert_eq!(config.work_dir, cwd.join("w"));
    assert_eq!(config.ca_cert, Some(cwd.join("ca.pem")));
    match config.strategy {
        Strategy::Docker(docker) => assert_eq!(docker.docker_bin, cwd.join("bin/docker")),
        other => panic!("expected the docker strategy, got {other:?}"),
    }
    let file = config_file(
        "backend_url = \"ws://127.0.0.1:8000\"\nname = \"relative\"\nkey = \"/k\"\n\
         [strategy]\nkind = \"docker\"\nimage = \"rust:1\"\ndocker_bin = \"docker\"\n",
    );
    let config = parse(&["--config", file.path().to_str().unwrap()])
        .unwrap()
        .resolve()
        .unwrap();
    match config.strategy {
        Strategy::Docker(docker) => assert_eq!(docker.docker_bin, PathBuf::from("docker")),
        other => panic!("expected the docker strategy, got {other:?}"),
    }
}

#[test]
fn an_embedded_builder_config_has_absolute_paths() {
    let cwd = std::env::current_dir().unwrap();
    let config = BuilderConfig::new("ws://127.0.0.1:8000", "key", "embedded", "work").unwrap();
    assert_eq!(config.key_path, cwd.join("key"));
    assert_eq!(config.work_dir, cwd.join("work"));
}

#[test]
fn an_empty_path_is_a_clear_error() {
    let file = config_file(
        "backend_url = \"ws://127.0.0.1:8000\"\nname = \"empty\"\nkey = \"/k\"\nwork_dir = \"\"\n",
    );
    let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
    assert!(
        matches!(
            err,
            ConfigError::Path {
                what: "work dir",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn reconnect_settings_resolve_and_bad_ones_give_clear_errors() {
    use std::time::Duration;
    let base = "backend_url = \"ws://127.0.0.1:8000\"\nkey = \"/k\"\nname = \"n\"\n";
    let file = config_file(&format!(
        "{base}[reconnect]\ninitial_backoff_ms = 100\nmax_backoff_ms = 2000\nreplaced_backoff_ms = 45000\n"
    ));
    let config = parse(&["--config", file.path().to_str().unwrap()])
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(config.reconnect.initial_backoff, Duration::from_millis(100));
    assert_eq!(config.reconnect.max_backoff, Duration::from_secs(2));
    assert_eq!(config.reconnect.replaced_backoff, Duration::from_secs(45));
    assert_eq!(config.reconnect.healthy_after, Duration::from_secs(10));

    for (table, field) in [
        ("initial_backoff_ms = 0", "initial_backoff_ms"),
        (
            "initial_backoff_ms = 500\nmax_backoff_ms = 100",
            "max_backoff_ms",
        ),
        ("replaced_backoff_ms = 0", "replaced_backoff_ms"),
    ] {
        let file = config_file(&format!("{base}[reconnect]\n{table}\n"));
        let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
        assert!(
            matches!(err, ConfigError::Reconnect { field: f, .. } if f == field),
            "{table}: {err}"
        );
    }
    let file = config_file(&format!("{base}[reconnect]\nbackoff = 1\n"));
    let err = resolve_err(&["--config", file.path().to_str().unwrap()]);
    assert!(err.to_string().contains("backoff"), "{err}");
}
