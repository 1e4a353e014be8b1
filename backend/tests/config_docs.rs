//! Every setting the backend reads is discoverable and documented truly: `docs/config.md`
//! names each flag, variable and key, its complete example file loads through
//! `ServerConfig::resolve` with the documented defaults, `serve --help` names every limit and
//! timing flag, and a bad timing combination given by flag or environment stops the real
//! binary at start with an error that names the keys.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use buildfleet_backend::config::{
    Limits, ServeArgs, ServerConfig, Timings, LIMIT_KEYS, TIMING_KEYS,
};
use clap::Args as _;

fn config_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The TOML block of the "A complete example" section.
fn example_toml(doc: &str) -> String {
    let section = doc
        .split_once("## A complete example")
        .expect("docs/config.md has a section \"A complete example\"")
        .1;
    let block = section
        .split_once("```toml\n")
        .expect("the example section has a ```toml block")
        .1;
    block
        .split_once("```")
        .expect("the toml block is closed")
        .0
        .to_owned()
}

/// `(long flag, environment variable)` of every `serve` argument.
fn serve_flags() -> Vec<(String, String)> {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long} reads no environment variable"));
            Some((long.to_owned(), env.to_string_lossy().into_owned()))
        })
        .collect()
}

#[test]
fn the_example_config_in_the_docs_has_every_key_and_resolves_to_the_defaults() {
    let toml_text = example_toml(&config_md());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buildfleet.toml");
    std::fs::write(&path, &toml_text).expect("writing the example");
    let config = ServerConfig::resolve(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap_or_else(|e| panic!("the example in docs/config.md does not load: {e:#}"));
    // The example documents the defaults: a wrong number in it fails here.
    assert_eq!(config.limits, Limits::default(), "[limits] of the example");
    assert_eq!(
        config.timings,
        Timings::default(),
        "[timings] of the example"
    );

    // Every key the backend reads is in the example, and only those (unknown keys would
    // have failed to load above).
    let value: toml::Table = toml_text.parse().expect("the example is TOML");
    let mut found = BTreeSet::new();
    for (key, item) in &value {
        match item.as_table() {
            Some(table) => found.extend(table.keys().map(|k| format!("{key}.{k}"))),
            None => {
                found.insert(key.clone());
            }
        }
    }
    let mut expected: BTreeSet<String> = serve_flags()
        .into_iter()
        .map(|(long, _)| long.replace('-', "_"))
        .filter(|key| key != "config")
        .filter(|key| !LIMIT_KEYS.iter().chain(TIMING_KEYS).any(|(k, _)| k == key))
        .collect();
    expected.extend(LIMIT_KEYS.iter().map(|(k, _)| format!("limits.{k}")));
    expected.extend(TIMING_KEYS.iter().map(|(k, _)| format!("timings.{k}")));
    assert_eq!(found, expected, "keys of the example in docs/config.md");
}

#[test]
fn the_docs_name_every_flag_variable_and_key() {
    let doc = config_md();
    for (long, env) in serve_flags() {
        assert!(
            doc.contains(&format!("`--{long}`")),
            "docs/config.md lacks --{long}"
        );
        assert!(
            doc.contains(&format!("`{env}`")),
            "docs/config.md lacks {env}"
        );
        let key = long.replace('-', "_");
        if key != "config" {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "no table row for {key}"
            );
        }
    }
}

fn buildfleet(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_buildfleet"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BUILDFLEET_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("running the buildfleet binary")
}

#[test]
fn serve_help_names_every_limit_and_timing_flag_and_the_docs() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [&["serve", "--help"][..], &["--help"][..]] {
        let output = buildfleet(args, &[], dir.path());
        assert!(output.status.success(), "buildfleet {args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for heading in ["Limits:", "Timings:"] {
            assert!(help.contains(heading), "{args:?} lacks {heading}:\n{help}");
        }
        for (key, env) in LIMIT_KEYS.iter().chain(TIMING_KEYS) {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "{args:?} lacks {flag}:\n{help}");
            assert!(help.contains(env), "{args:?} lacks {env}:\n{help}");
        }
        assert!(help.contains("docs/config.md"), "{args:?}:\n{help}");
    }
}

#[test]
fn a_challenge_outliving_the_handshake_stops_the_backend_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let by_env = buildfleet(
        &["serve", "--bind", "127.0.0.1:0"],
        &[("BUILDFLEET_CHALLENGE_TTL_MS", "30000")],
        dir.path(),
    );
    let by_flag = buildfleet(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--handshake-timeout-ms",
            "15000",
        ],
        &[],
        dir.path(),
    );
    for output in [by_env, by_flag] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started anyway: {stderr}");
        assert!(
            stderr.contains("challenge_ttl_ms") && stderr.contains("handshake_timeout_ms"),
            "the error names both keys: {stderr}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "refused before anything was created"
    );
}
