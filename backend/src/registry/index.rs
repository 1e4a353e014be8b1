//! The Cargo registry index format, as both protocols serve it: one file per crate at a path
//! derived from its name, one JSON line per version (`name`, `vers`, `cksum`, `yanked`, …),
//! and a `config.json` whose `dl` template says where `.crate` files are downloaded from.
//! See <https://doc.rust-lang.org/cargo/reference/registry-index.html>.

use serde::Deserialize;

use crate::store::IndexVersion;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("crate name {0:?}: 1 to 64 characters of letters, digits, '-' and '_', starting with a letter")]
    CrateName(String),
    #[error("index file of {krate}, line {line}: {reason}")]
    Line {
        krate: String,
        line: usize,
        reason: String,
    },
    #[error("config.json: {0}")]
    Config(String),
}

/// One line of a crate's index file; the fields the follower needs.
#[derive(Debug, Clone, Deserialize)]
struct IndexLine {
    name: String,
    vers: String,
    cksum: String,
    #[serde(default)]
    yanked: bool,
}

/// The registry's `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryConfig {
    pub dl: String,
}

pub fn check_crate_name(name: &str) -> Result<(), IndexError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(IndexError::CrateName(name.to_owned()))
    }
}

/// The directory part of a crate's index path (`1`, `2`, `3/a`, `ab/cd`), in the name's
/// own case; the `{prefix}` of a `dl` template.
pub fn prefix(name: &str) -> String {
    match name.len() {
        1 => "1".to_owned(),
        2 => "2".to_owned(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    }
}

/// Where a crate's index file is, relative to the index root: lowercased.
pub fn file_path(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    format!("{}/{lower}", prefix(&lower))
}

/// Parses a crate's index file. A line that is not a version of `name` with a valid
/// version and SHA-256 is an error naming the line: the follower builds nothing from a file
/// it cannot read whole.
pub fn parse_file(name: &str, text: &str) -> Result<Vec<IndexVersion>, IndexError> {
    let mut versions = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let bad = |reason: String| IndexError::Line {
            krate: name.to_owned(),
            line: n + 1,
            reason,
        };
        let line: IndexLine = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        if !line.name.eq_ignore_ascii_case(name) {
            return Err(bad(format!("names crate {:?}", line.name)));
        }
        semver::Version::parse(&line.vers)
            .map_err(|e| bad(format!("version {:?}: {e}", line.vers)))?;
        let cksum = line.cksum.to_ascii_lowercase();
        if cksum.len() != 64 || !cksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("cksum {:?} is not a SHA-256", line.cksum)));
        }
        versions.push(IndexVersion {
            version: line.vers,
            cksum,
            yanked: line.yanked,
        });
    }
    Ok(versions)
}

/// The crate's name as the index spells it (the first line's), for URLs and annotations.
pub fn spelled_name(text: &str) -> Option<String> {
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<IndexLine>(first)
        .ok()
        .map(|l| l.name)
}

impl RegistryConfig {
    pub fn parse(text: &str) -> Result<Self, IndexError> {
        let config: RegistryConfig =
            serde_json::from_str(text).map_err(|e| IndexError::Config(e.to_string()))?;
        if !(config.dl.starts_with("https://") || config.dl.starts_with("http://")) {
            return Err(IndexError::Config(format!(
                "dl {:?} is not an http(s) URL",
                config.dl
            )));
        }
        Ok(config)
    }

    /// The `.crate` URL of a version: the `dl` template with its markers filled, or
    /// `{dl}/{crate}/{version}/download` when it has none.
    pub fn download_url(&self, name: &str, version: &str, cksum: &str) -> String {
        const MARKERS: [&str; 5] = [
            "{crate}",
            "{version}",
            "{prefix}",
            "{lowerprefix}",
            "{sha256-checksum}",
        ];
        if !MARKERS.iter().any(|m| self.dl.contains(m)) {
            return format!(
                "{}/{name}/{version}/download",
                self.dl.trim_end_matches('/')
            );
        }
        self.dl
            .replace("{crate}", name)
            .replace("{version}", version)
            .replace("{prefix}", &prefix(name))
            .replace("{lowerprefix}", &prefix(&name.to_ascii_lowercase()))
            .replace("{sha256-checksum}", cksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "0d0fbd3b9b2ac4f7e1b3cc4e9d3c2b8d2a6d9b1e3f8f5c6a7b8c9d0e1f2a3b4c";

    #[test]
    fn index_paths_follow_cargo() {
        assert_eq!(file_path("a"), "1/a");
        assert_eq!(file_path("ab"), "2/ab");
        assert_eq!(file_path("abc"), "3/a/abc");
        assert_eq!(file_path("Serde_JSON"), "se/rd/serde_json");
        assert_eq!(prefix("Serde"), "Se/rd");
    }

    #[test]
    fn dl_templates_are_filled() {
        let plain = RegistryConfig::parse(r#"{"dl":"https://static.crates.io/crates"}"#).unwrap();
        assert_eq!(
            plain.download_url("itoa", "1.0.0", SUM),
            "https://static.crates.io/crates/itoa/1.0.0/download"
        );
        let marked = RegistryConfig::parse(
            r#"{"dl":"http://127.0.0.1:9/dl/{lowerprefix}/{crate}-{version}.crate?sum={sha256-checksum}&p={prefix}"}"#,
        )
        .unwrap();
        assert_eq!(
            marked.download_url("Rip", "0.1.0", SUM),
            format!("http://127.0.0.1:9/dl/3/r/Rip-0.1.0.crate?sum={SUM}&p=3/R")
        );
        assert!(RegistryConfig::parse(r#"{"dl":"file:///etc"}"#).is_err());
        assert!(RegistryConfig::parse("{}").is_err());
    }

    #[test]
    fn index_files_parse_and_bad_lines_are_named() {
        let text = format!(
            "{{\"name\":\"itoa\",\"vers\":\"1.0.0\",\"deps\":[],\"cksum\":\"{SUM}\",\"features\":{{}},\"yanked\":false}}\n\
             \n{{\"name\":\"itoa\",\"vers\":\"1.0.1\",\"cksum\":\"{}\",\"yanked\":true}}\n",
            SUM.to_ascii_uppercase()
        );
        let versions = parse_file("itoa", &text).unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[1].cksum, SUM);
        assert!(versions[1].yanked);
        assert_eq!(spelled_name(&text).as_deref(), Some("itoa"));

        let wrong_name = format!("{{\"name\":\"other\",\"vers\":\"1.0.0\",\"cksum\":\"{SUM}\"}}");
        assert!(matches!(
            parse_file("itoa", &wrong_name),
            Err(IndexError::Line { line: 1, .. })
        ));
        let bad_version = format!("{{\"name\":\"itoa\",\"vers\":\"../1\",\"cksum\":\"{SUM}\"}}");
        assert!(parse_file("itoa", &bad_version).is_err());
        let bad_sum = "{\"name\":\"itoa\",\"vers\":\"1.0.0\",\"cksum\":\"abc\"}";
        assert!(parse_file("itoa", bad_sum).is_err());
        assert!(parse_file("itoa", "not json").is_err());
    }

    #[test]
    fn crate_names_are_checked() {
        assert!(check_crate_name("serde_json").is_ok());
        assert!(check_crate_name("a-1").is_ok());
        for bad in ["", "1abc", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_crate_name(bad).is_err(), "{bad:?}");
        }
    }
}
