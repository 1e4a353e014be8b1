//! The `[registry]` table of the config file: which index to follow, which crates (for a
//! sparse index), what to build of each version, and the limits.

use std::time::Duration;

use serde::Deserialize;

use super::index::check_crate_name;
use crate::store::Labels;

/// The `[registry]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// A name for this registry in records, annotations and URLs (default `default`).
    pub name: Option<String>,
    /// `sparse+http(s)://…/` for a sparse index, or a git URL (`https://…`, `file://…`, a
    /// path) for a git index.
    pub index: String,
    /// Crates to follow; required for a sparse index, which cannot list what changed. For a
    /// git index, empty follows every crate, else only these.
    #[serde(default)]
    pub crates: Vec<String>,
    pub poll_interval_secs: Option<u64>,
    /// What to build of every new version; one `cargo-build` for the builder's own target
    /// when empty.
    #[serde(default)]
    pub builds: Vec<BuildSpec>,
    /// Crates never built; their versions are recorded as skipped.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The builder refuses a `.crate` bigger than this.
    pub max_crate_bytes: Option<u64>,
    pub priority: Option<i32>,
    pub backfill_priority: Option<i32>,
    pub max_attempts: Option<i32>,
    pub timeout_secs: Option<u64>,
}

/// One build of every version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub recipe: String,
    /// Recorded as the `target` annotation and part of the de-duplication key; empty for
    /// the builder's own target.
    #[serde(default)]
    pub target: String,
    /// Labels the builder must have (e.g. `target = "aarch64-unknown-linux-gnu"`).
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSource {
    /// The index root URL, ending in `/`.
    Sparse(String),
    Git(String),
}

impl IndexSource {
    /// The URL that index paths are appended to (sparse) or fetched from (git).
    pub fn base(&self) -> &str {
        match self {
            IndexSource::Sparse(base) | IndexSource::Git(base) => base,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub name: String,
    pub index: IndexSource,
    pub crates: Vec<String>,
    pub poll_interval: Duration,
    pub builds: Vec<BuildSpec>,
    pub deny: Vec<String>,
    pub max_crate_bytes: i64,
    pub priority: i32,
    pub backfill_priority: i32,
    pub max_attempts: i32,
    pub timeout_secs: i64,
}

const DEFAULT_MAX_CRATE_BYTES: u64 = 50 << 20;
const DEFAULT_BACKFILL_PRIORITY: i32 = -100;

impl RegistryFile {
    /// Checks the table and fills in the defaults; errors name the key.
    pub fn resolve(&self) -> anyhow::Result<RegistrySettings> {
        let name = self.name.clone().unwrap_or_else(|| "default".into());
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "invalid config: registry.name {name:?}: 1 to 64 of letters, digits, '-' and '_'"
        );
        let index = match self.index.strip_prefix("sparse+") {
            Some(url) => {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "invalid config: registry.index {:?}: a sparse index is sparse+http(s)://…",
                    self.index
                );
                IndexSource::Sparse(format!("{}/", url.trim_end_matches('/')))
            }
            None => {
                anyhow::ensure!(
                    !self.index.trim().is_empty(),
                    "invalid config: registry.index is empty"
                );
                IndexSource::Git(self.index.clone())
            }
        };
        if matches!(index, IndexSource::Sparse(_)) {
            anyhow::ensure!(
                !self.crates.is_empty(),
                "invalid config: registry.crates: a sparse index is followed for a list of crates; name them"
            );
        }
        for krate in self.crates.iter().chain(&self.deny) {
            check_crate_name(krate)
                .map_err(|e| anyhow::anyhow!("invalid config: registry: {e}"))?;
        }
        let builds = if self.builds.is_empty() {
            vec![BuildSpec {
                recipe: "cargo-build".into(),
                target: String::new(),
                labels: Labels::new(),
            }]
        } else {
            self.builds.clone()
        };
        let priority = self.priority.unwrap_or(0);
        let backfill_priority = self.backfill_priority.unwrap_or(DEFAULT_BACKFILL_PRIORITY);
        anyhow::ensure!(
            backfill_priority < priority,
            "invalid config: registry.backfill_priority ({backfill_priority}) must be below registry.priority ({priority}), so a backfill never delays a new release"
        );
        let poll = self.poll_interval_secs.unwrap_or(60);
        anyhow::ensure!(
            poll > 0,
            "invalid config: registry.poll_interval_secs must be above 0"
        );
        Ok(RegistrySettings {
            name,
            index,
            crates: self.crates.clone(),
            poll_interval: Duration::from_secs(poll),
            builds,
            deny: self.deny.clone(),
            max_crate_bytes: i64::try_from(self.max_crate_bytes.unwrap_or(DEFAULT_MAX_CRATE_BYTES))
                .unwrap_or(i64::MAX),
            priority,
            backfill_priority,
            max_attempts: self.max_attempts.unwrap_or(3),
            timeout_secs: i64::try_from(self.timeout_secs.unwrap_or(3600)).unwrap_or(i64::MAX),
        })
    }
}

impl RegistrySettings {
    pub fn is_denied(&self, krate: &str) -> bool {
        self.deny.iter().any(|d| d.eq_ignore_ascii_case(krate))
    }

    /// For a git index with a crate list, only those crates are followed.
    pub fn follows(&self, krate: &str) -> bool {
        self.crates.is_empty() || self.crates.iter().any(|c| c.eq_ignore_ascii_case(krate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(index: &str) -> RegistryFile {
        RegistryFile {
            index: index.into(),
            ..RegistryFile::default()
        }
    }

    #[test]
    fn sparse_needs_crates_and_git_does_not() {
        let err = file("sparse+https://index.crates.io")
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("registry.crates"), "{err}");
        let sparse = RegistryFile {
            crates: vec!["ripgrep".into()],
            ..file("sparse+https://index.crates.io")
        }
        .resolve()
        .unwrap();
        assert_eq!(
            sparse.index,
            IndexSource::Sparse("https://index.crates.io/".into())
        );
        assert_eq!(sparse.builds[0].recipe, "cargo-build");
        let git = file("https://github.com/rust-lang/crates.io-index")
            .resolve()
            .unwrap();
        assert!(matches!(git.index, IndexSource::Git(_)));
        assert!(git.follows("anything"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (file("sparse+ftp://x"), "registry.index"),
            (
                RegistryFile {
                    crates: vec!["../x".into()],
                    ..file("sparse+http://x")
                },
                "crate name",
            ),
            (
                RegistryFile {
                    backfill_priority: Some(5),
                    ..file("/tmp/index")
                },
                "registry.backfill_priority",
            ),
            (
                RegistryFile {
                    poll_interval_secs: Some(0),
                    ..file("/tmp/index")
                },
                "poll_interval_secs",
            ),
            (
                RegistryFile {
                    name: Some("a b".into()),
                    ..file("/tmp/index")
                },
                "registry.name",
            ),
        ];
        for (file, key) in cases {
            let err = file.resolve().unwrap_err().to_string();
            assert!(err.contains(key), "{err} names {key}");
        }
    }
}
