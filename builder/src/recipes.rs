//! Recipes: named, versioned lists of commands plus the artifacts they leave in the job's
//! output directory. Two are built in (`cargo-build`, `cargo-doc`); more come from the
//! config file's `[[recipes]]` tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use buildfleet_protocol::RecipeCapability;
use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    #[error("recipe {recipe:?}: {reason}")]
    Invalid { recipe: String, reason: String },
    #[error("recipe {0:?} is defined twice in the config file")]
    Duplicate(String),
}

/// A `[[recipes]]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    pub name: String,
    pub version: String,
    /// Each command is an argv; `${BUILDFLEET_OUT}`, `${BUILDFLEET_SRC}` and the other
    /// `BUILDFLEET_*` variables are expanded in arguments and env values.
    pub commands: Vec<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactConfig>,
    /// Docker image for this recipe (docker strategy only).
    pub image: Option<String>,
    /// Commands whose first output line names a tool's version (`[["gcc", "--version"]]`),
    /// reported in the build statement's `runDetails.builder.version` under the program's
    /// name. Run once per builder process and cached. Cargo recipes report `rustc` and
    /// `cargo` without asking.
    #[serde(default)]
    pub version_commands: Vec<Vec<String>>,
}

/// An artifact: a path under the output directory, uploaded as `name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactConfig {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub pack: Pack,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Pack {
    /// Upload the file as it is.
    #[default]
    #[serde(rename = "file")]
    File,
    /// Upload a gzipped tarball of the file or directory.
    #[serde(rename = "tar.gz")]
    TarGz,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRule {
    Declared(ArtifactConfig),
    /// The executables at the top of `target/release`, or its `.rlib`s for a library-only
    /// crate, packed as `<crate>-<version>-<arch>-<os>.tar.gz`.
    CargoRelease,
}

/// The built-in recipe that reads a crate's manifest for the registry follower.
pub const CRATE_METADATA: &str = "crate-metadata";

/// Job parameters that cargo recipes turn into arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CargoOptions {
    pub offline: bool,
    /// `features`: passed as `--features=<value>`.
    pub features: Option<String>,
    /// `bins` (comma separated): `--bin=<name>` each, for `cargo build`.
    pub bins: Vec<String>,
}

impl CargoOptions {
    /// From a job's parameters, `offline` defaulting to the builder's setting.
    pub fn from_parameters(parameters: &BTreeMap<String, String>, offline_default: bool) -> Self {
        CargoOptions {
            offline: parameters
                .get("offline")
                .map_or(offline_default, |v| v == "true" || v == "1"),
            features: parameters
                .get("features")
                .filter(|f| !f.is_empty())
                .cloned(),
            bins: parameters
                .get("bins")
                .map(|b| {
                    b.split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    pub commands: Vec<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub artifacts: Vec<ArtifactRule>,
    pub image: Option<String>,
    /// Cargo recipes get `--offline` appended when the job or the config asks for it.
    pub is_cargo: bool,
    /// The toolchain version commands (see [`RecipeConfig::version_commands`]).
    pub version_commands: Vec<Vec<String>>,
}

impl Recipe {
    fn cargo_build() -> Self {
        Recipe {
            name: "cargo-build".into(),
            version: "1".into(),
            commands: vec![argv(&["cargo", "build", "--release"])],
            env: cargo_env(),
            artifacts: vec![ArtifactRule::CargoRelease],
            image: None,
            is_cargo: true,
            version_commands: rust_version_commands(),
        }
    }

    /// What a crate asks to be built: `cargo metadata` of the unpacked crate (targets,
    /// features and `[package.metadata]`, nothing resolved), uploaded as `metadata.json`.
    /// The registry follower reads it to choose the builds that follow.
    fn crate_metadata() -> Self {
        Recipe {
            name: CRATE_METADATA.into(),
            version: "1".into(),
            commands: vec![argv(&[
                "sh",
                "-c",
                "cargo metadata --no-deps --format-version 1 --offline > \"$BUILDFLEET_OUT/metadata.json\"",
            ])],
            env: cargo_env(),
            artifacts: vec![ArtifactRule::Declared(ArtifactConfig {
                name: "metadata.json".into(),
                path: "metadata.json".into(),
                pack: Pack::File,
            })],
            image: None,
            is_cargo: false,
            version_commands: rust_version_commands(),
        }
    }

    fn cargo_doc() -> Self {
        Recipe {
            name: "cargo-doc".into(),
            version: "1".into(),
            commands: vec![argv(&["cargo", "doc", "--no-deps"])],
            env: cargo_env(),
            artifacts: vec![ArtifactRule::Declared(ArtifactConfig {
                name: "doc.tar.gz".into(),
                path: "target/doc".into(),
                pack: Pack::TarGz,
            })],
            image: None,
            is_cargo: true,
            version_commands: rust_version_commands(),
        }
    }

    /// The commands to run, with `--offline` added to cargo invocations when asked.
    pub fn commands_for(&self, offline: bool) -> Vec<Vec<String>> {
        self.commands_with(&CargoOptions {
            offline,
            ..CargoOptions::default()
        })
    }

    /// The commands to run, with the job's cargo options added to cargo invocations: each
    /// option is its own argument (no shell), so a value cannot become another flag's.
    pub fn commands_with(&self, options: &CargoOptions) -> Vec<Vec<String>> {
        let mut commands = self.commands.clone();
        if !self.is_cargo {
            return commands;
        }
        for command in &mut commands {
            if command.first().is_none_or(|p| p != "cargo") {
                continue;
            }
            if options.offline {
                command.push("--offline".into());
            }
            if let Some(features) = &options.features {
                command.push(format!("--features={features}"));
            }
            let builds = command.get(1).is_some_and(|sub| sub == "build");
            for bin in options.bins.iter().filter(|_| builds) {
                command.push(format!("--bin={bin}"));
            }
        }
        commands
    }

    pub fn capability(&self) -> RecipeCapability {
        RecipeCapability {
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }

    fn from_config(config: RecipeConfig) -> Result<Self, RecipeError> {
        let invalid = |reason: String| RecipeError::Invalid {
            recipe: config.name.clone(),
            reason,
        };
        if !is_safe_token(&config.name) {
            return Err(invalid(
                "names use letters, digits, '.', '_' and '-'".into(),
            ));
        }
        if !is_safe_token(&config.version) {
            return Err(invalid(
                "versions use letters, digits, '.', '_' and '-'".into(),
            ));
        }
        if config.commands.is_empty() {
            return Err(invalid("`commands` is empty".into()));
        }
        if config
            .commands
            .iter()
            .any(|c| c.first().is_none_or(|p| p.is_empty()))
        {
            return Err(invalid("every command needs a program name".into()));
        }
        if config
            .version_commands
            .iter()
            .any(|c| c.first().is_none_or(|p| p.is_empty()))
        {
            return Err(invalid("every version command needs a program name".into()));
        }
        if let Some(key) = config.env.keys().find(|k| !is_env_name(k)) {
            return Err(invalid(format!(
                "env name {key:?} is not a valid variable name"
            )));
        }
        let mut names = BTreeSet::new();
        for artifact in &config.artifacts {
            validate_artifact_name(&artifact.name)
                .map_err(|reason| invalid(format!("artifact {:?}: {reason}", artifact.name)))?;
            if !names.insert(artifact.name.clone()) {
                return Err(invalid(format!(
                    "artifact {:?} is declared twice",
                    artifact.name
                )));
            }
            if !is_contained_relative_path(&artifact.path) {
                return Err(invalid(format!(
                    "artifact path {:?} must be relative to the output directory, without '..'",
                    artifact.path
                )));
            }
        }
        let is_cargo = false;
        Ok(Recipe {
            name: config.name,
            version: config.version,
            commands: config.commands,
            env: config.env,
            artifacts: config
                .artifacts
                .into_iter()
                .map(ArtifactRule::Declared)
                .collect(),
            image: config.image,
            is_cargo,
            version_commands: config.version_commands,
        })
    }
}

/// What the built-in recipes report: the Rust toolchain they run.
fn rust_version_commands() -> Vec<Vec<String>> {
    vec![argv(&["rustc", "--version"]), argv(&["cargo", "--version"])]
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Cargo writes into the output directory so the same recipe works where the source is
/// read-only (docker) and where it is not (process).
fn cargo_env() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "CARGO_TARGET_DIR".to_owned(),
        "${BUILDFLEET_OUT}/target".to_owned(),
    )])
}

/// The recipes this builder runs, looked up by name (or `name@version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeBook {
    recipes: Vec<Recipe>,
}

impl RecipeBook {
    /// The built-in recipes plus `configured` ones; a configured recipe with a built-in's
    /// name replaces it.
    pub fn with_builtins(configured: Vec<RecipeConfig>) -> Result<Self, RecipeError> {
        let mut recipes = vec![
            Recipe::cargo_build(),
            Recipe::cargo_doc(),
            Recipe::crate_metadata(),
        ];
        let mut seen = BTreeSet::new();
        for config in configured {
            if !seen.insert(config.name.clone()) {
                return Err(RecipeError::Duplicate(config.name));
            }
            let recipe = Recipe::from_config(config)?;
            recipes.retain(|r| r.name != recipe.name);
            recipes.push(recipe);
        }
        Ok(RecipeBook { recipes })
    }

    pub fn get(&self, requested: &str) -> Option<&Recipe> {
        let (name, version) = match requested.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (requested, None),
        };
        self.recipes
            .iter()
            .find(|r| r.name == name && version.is_none_or(|v| v == r.version))
    }

    pub fn capabilities(&self) -> Vec<RecipeCapability> {
        let mut caps: Vec<_> = self.recipes.iter().map(Recipe::capability).collect();
        caps.sort();
        caps
    }

    pub fn all_have_images(&self) -> bool {
        self.recipes.iter().all(|r| r.image.is_some())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Recipe> {
        self.recipes.iter()
    }
}

/// Artifact names as the backend accepts them: `[A-Za-z0-9._+-]`, 1 to 128 characters,
/// not starting with '.'.
pub fn validate_artifact_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("names are 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return Err("names must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        return Err("names use letters, digits, '.', '_', '+' and '-'");
    }
    Ok(())
}

fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn is_contained_relative_path(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The job parameter `name` as an environment variable name: `BUILDFLEET_PARAM_<NAME>`,
/// upper-cased, other characters as '_'.
pub fn param_env_name(name: &str) -> String {
    let mut out = String::from("BUILDFLEET_PARAM_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

/// Replaces `${NAME}` for every variable of `vars` in `text`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    if !text.contains("${") {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_name_and_version() {
        let book = RecipeBook::with_builtins(Vec::new()).unwrap();
        assert!(book.get("cargo-build").is_some());
        assert!(book.get("cargo-build@1").is_some());
        assert!(book.get("cargo-build@2").is_none());
        assert!(book.get("nope").is_none());
    }

    #[test]
    fn offline_is_appended_to_cargo_commands_only() {
        let recipe = Recipe::cargo_build();
        assert_eq!(
            recipe.commands_for(true)[0].last().map(String::as_str),
            Some("--offline")
        );
        assert!(!recipe.commands_for(false)[0].contains(&"--offline".to_owned()));
        let parameters = BTreeMap::from([
            ("features".to_owned(), "serde,std".to_owned()),
            ("bins".to_owned(), "rg, rg-helper".to_owned()),
        ]);
        let options = CargoOptions::from_parameters(&parameters, false);
        assert_eq!(
            recipe.commands_with(&options)[0],
            [
                "cargo",
                "build",
                "--release",
                "--features=serde,std",
                "--bin=rg",
                "--bin=rg-helper"
            ]
        );
    }

    #[test]
    fn expands_known_variables_only() {
        let vars = BTreeMap::from([("BUILDFLEET_OUT".to_owned(), "/out".to_owned())]);
        assert_eq!(
            expand("${BUILDFLEET_OUT}/target ${OTHER}", &vars),
            "/out/target ${OTHER}"
        );
        assert_eq!(param_env_name("opt-level"), "BUILDFLEET_PARAM_OPT_LEVEL");
    }
}
