//! Reading a crate's `cargo metadata` output (what the builder's `crate-metadata` recipe
//! uploads) and deciding the builds that follow: none for a library-only crate, else the
//! registry's configured builds, narrowed by the author's `[package.metadata.buildfleet]`
//! table (`bins`, `features`, `targets`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::BuildSpec;

/// `metadata.json` bigger than this is not what the recipe writes.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("metadata.json is not cargo metadata output: {0}")]
    Format(String),
    #[error("metadata.json describes no package {0:?}")]
    NoPackage(String),
    #[error("[package.metadata.buildfleet]: {0}")]
    AuthorTable(String),
}

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
    targets: Vec<Target>,
    #[serde(default)]
    features: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// `[package.metadata.buildfleet]`: what the author wants built.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct AuthorChoice {
    bins: Option<Vec<String>>,
    features: Option<Vec<String>>,
    targets: Option<Vec<String>>,
}

/// One build to queue: the configured spec and the parameters the author's choice adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBuild {
    pub spec: BuildSpec,
    pub parameters: BTreeMap<String, String>,
}

/// What a version's metadata decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Build(Vec<PlannedBuild>),
    /// No binaries: nothing to build.
    Library,
    /// The author's table rules out every configured build; says why.
    Nothing(String),
}

pub fn decide(json: &[u8], krate: &str, specs: &[BuildSpec]) -> Result<Decision, MetadataError> {
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| MetadataError::Format(e.to_string()))?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.eq_ignore_ascii_case(krate))
        .ok_or_else(|| MetadataError::NoPackage(krate.to_owned()))?;
    let bins: Vec<String> = package
        .targets
        .iter()
        .filter(|t| t.kind.iter().any(|k| k == "bin"))
        .map(|t| t.name.clone())
        .collect();
    if bins.is_empty() {
        return Ok(Decision::Library);
    }
    let choice: AuthorChoice = match package.metadata.as_ref().and_then(|m| m.get("buildfleet")) {
        Some(table) => serde_json::from_value(table.clone())
            .map_err(|e| MetadataError::AuthorTable(e.to_string()))?,
        None => AuthorChoice::default(),
    };
    let mut parameters = BTreeMap::new();
    if let Some(wanted) = &choice.bins {
        if let Some(unknown) = wanted.iter().find(|b| !bins.contains(b)) {
            return Err(MetadataError::AuthorTable(format!(
                "bins names {unknown:?}, which is not a binary of the crate ({})",
                bins.join(", ")
            )));
        }
        if !wanted.is_empty() {
            parameters.insert("bins".to_owned(), wanted.join(","));
        }
    }
    if let Some(features) = &choice.features {
        if let Some(unknown) = features.iter().find(|f| !package.features.contains_key(*f)) {
            return Err(MetadataError::AuthorTable(format!(
                "features names {unknown:?}, which the crate does not declare"
            )));
        }
        if !features.is_empty() {
            parameters.insert("features".to_owned(), features.join(","));
        }
    }
    let planned: Vec<PlannedBuild> = specs
        .iter()
        .filter(|spec| {
            // A spec for the builder's own target has no name to compare; it is kept.
            spec.target.is_empty()
                || choice
                    .targets
                    .as_ref()
                    .is_none_or(|targets| targets.contains(&spec.target))
        })
        .map(|spec| PlannedBuild {
            spec: spec.clone(),
            parameters: parameters.clone(),
        })
        .collect();
    if planned.is_empty() {
        return Ok(Decision::Nothing(format!(
            "the crate's targets ({}) include none this registry builds",
            choice.targets.unwrap_or_default().join(", ")
        )));
    }
    Ok(Decision::Build(planned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Labels;

    fn spec(target: &str) -> BuildSpec {
        BuildSpec {
            recipe: "cargo-build".into(),
            target: target.into(),
            labels: Labels::new(),
        }
    }

    fn metadata(targets: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"packages":[{{"name":"rip","version":"1.0.0","targets":[{targets}],
               "features":{{"default":[],"pcre2":[]}},"metadata":{extra}}}],
               "workspace_members":[],"version":1}}"#
        )
        .into_bytes()
    }

    const BIN: &str = r#"{"name":"rg","kind":["bin"]},{"name":"rip","kind":["lib"]}"#;

    #[test]
    fn a_library_only_crate_gets_no_builds() {
        let json = metadata(r#"{"name":"rip","kind":["lib"]}"#, "null");
        assert_eq!(
            decide(&json, "rip", &[spec("")]).unwrap(),
            Decision::Library
        );
    }

    #[test]
    fn a_binary_crate_gets_every_configured_build() {
        let json = metadata(BIN, "null");
        let specs = [spec(""), spec("x86_64-unknown-linux-gnu")];
        let Decision::Build(builds) = decide(&json, "rip", &specs).unwrap() else {
            panic!("builds expected")
        };
        assert_eq!(builds.len(), 2);
        assert!(builds[0].parameters.is_empty());
    }

    #[test]
    fn the_author_table_narrows_the_builds() {
        let json = metadata(
            BIN,
            r#"{"buildfleet":{"bins":["rg"],"features":["pcre2"],"targets":["aarch64-unknown-linux-gnu"]}}"#,
        );
        let specs = [
            spec("x86_64-unknown-linux-gnu"),
            spec("aarch64-unknown-linux-gnu"),
        ];
        let Decision::Build(builds) = decide(&json, "rip", &specs).unwrap() else {
            panic!("builds expected")
        };
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].spec.target, "aarch64-unknown-linux-gnu");
        assert_eq!(builds[0].parameters["bins"], "rg");
        assert_eq!(builds[0].parameters["features"], "pcre2");

        let only_elsewhere = metadata(
            BIN,
            r#"{"buildfleet":{"targets":["riscv64gc-unknown-linux-gnu"]}}"#,
        );
        assert!(matches!(
            decide(&only_elsewhere, "rip", &[spec("x86_64-unknown-linux-gnu")]).unwrap(),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn bad_author_tables_and_outputs_are_errors() {
        for extra in [
            r#"{"buildfleet":{"bins":["nope"]}}"#,
            r#"{"buildfleet":{"features":["nope"]}}"#,
            r#"{"buildfleet":{"unknown":1}}"#,
        ] {
            assert!(
                matches!(
                    decide(&metadata(BIN, extra), "rip", &[spec("")]),
                    Err(MetadataError::AuthorTable(_))
                ),
                "{extra}"
            );
        }
        assert!(matches!(
            decide(b"{}", "rip", &[spec("")]),
            Err(MetadataError::Format(_))
        ));
        assert!(matches!(
            decide(&metadata(BIN, "null"), "other", &[spec("")]),
            Err(MetadataError::NoPackage(_))
        ));
    }
}
