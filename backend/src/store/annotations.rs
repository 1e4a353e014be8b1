//! Annotations: what a job builds (`crate`, `version`, `target`, `commit`, `branch`, …), for
//! people, for filters and for the signed build statement.
//!
//! Written once, in the transaction that inserts the job, and never changed. Kept twice:
//! as JSON text on the job row (`jobs.annotations`, so every read of a job, the claim
//! included, has them without a second query), and as one `job_annotations` row per key with
//! the SHA-256 of its value, whose index `(key, value_sha256, job_id)` answers
//! `?annotation=key:value` on both databases. The index holds the digest, not the value:
//! a value may be longer than a PostgreSQL B-tree entry may be (about 2.7 KB).

use std::collections::BTreeMap;
use std::fmt;

use diesel::prelude::*;
use sha2::{Digest as _, Sha256};

use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::JobId;
use super::schema::job_annotations;

/// A job's annotations, ordered so they read and sign the same every time.
pub type Annotations = BTreeMap<String, String>;

/// Most annotations one job may carry.
pub const MAX_ANNOTATIONS: usize = 32;
/// Longest key, in bytes (keys are `[a-z0-9_.-]`).
pub const MAX_KEY_BYTES: usize = 64;
/// Longest value, in bytes of UTF-8, of every key but [`MESSAGE_KEY`].
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest `message` (a commit message), in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The one key whose value may be long and span lines.
pub const MESSAGE_KEY: &str = "message";
/// Most `annotation` filters one listing may combine.
pub const MAX_FILTERS: usize = 8;

/// Why a set of annotations (or a filter) was refused; the text names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotationError {
    TooMany {
        count: usize,
    },
    BadKey {
        key: String,
    },
    EmptyValue {
        key: String,
    },
    TooLong {
        key: String,
        bytes: usize,
        limit: usize,
    },
    ControlCharacter {
        key: String,
    },
    BadFilter {
        filter: String,
        reason: &'static str,
    },
    TooManyFilters {
        count: usize,
    },
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnnotationError::TooMany { count } => {
                write!(f, "annotations: at most {MAX_ANNOTATIONS}, not {count}")
            }
            AnnotationError::BadKey { key } => write!(
                f,
                "annotation key {key:?}: 1 to {MAX_KEY_BYTES} characters of [a-z0-9_.-]"
            ),
            AnnotationError::EmptyValue { key } => {
                write!(f, "annotation {key:?}: the value is empty")
            }
            AnnotationError::TooLong { key, bytes, limit } => write!(
                f,
                "annotation {key:?}: the value is {bytes} bytes, over the limit of {limit}"
            ),
            AnnotationError::ControlCharacter { key } => {
                let allowed = if key == MESSAGE_KEY {
                    " (a message may hold tabs and line breaks)"
                } else {
                    ""
                };
                write!(
                    f,
                    "annotation {key:?}: the value holds a control character{allowed}"
                )
            }
            AnnotationError::BadFilter { filter, reason } => {
                write!(f, "annotation filter {filter:?}: {reason}")
            }
            AnnotationError::TooManyFilters { count } => {
                write!(f, "at most {MAX_FILTERS} annotation filters, not {count}")
            }
        }
    }
}

impl std::error::Error for AnnotationError {}

impl From<AnnotationError> for StoreError {
    fn from(e: AnnotationError) -> Self {
        StoreError::InvalidInput(e.to_string())
    }
}

fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Checks every key and value, and the count. The first problem found (in key order) is
/// the one reported.
pub fn check(annotations: &Annotations) -> Result<(), AnnotationError> {
    if annotations.len() > MAX_ANNOTATIONS {
        return Err(AnnotationError::TooMany {
            count: annotations.len(),
        });
    }
    for (key, value) in annotations {
        if !valid_key(key) {
            return Err(AnnotationError::BadKey { key: key.clone() });
        }
        let is_message = key == MESSAGE_KEY;
        let limit = if is_message {
            MAX_MESSAGE_BYTES
        } else {
            MAX_VALUE_BYTES
        };
        if value.is_empty() {
            return Err(AnnotationError::EmptyValue { key: key.clone() });
        }
        if value.len() > limit {
            return Err(AnnotationError::TooLong {
                key: key.clone(),
                bytes: value.len(),
                limit,
            });
        }
        // NUL cannot be stored in PostgreSQL text, and other control characters would break
        // the tables that show values; a commit message keeps its lines.
        let allowed = |c: char| is_message && matches!(c, '\n' | '\r' | '\t');
        if value.chars().any(|c| c.is_control() && !allowed(c)) {
            return Err(AnnotationError::ControlCharacter { key: key.clone() });
        }
    }
    Ok(())
}

/// One `annotation` filter of a listing: the job has `key`, with `value` if one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationFilter {
    pub key: String,
    pub value: Option<String>,
}

impl AnnotationFilter {
    /// `key:value` (split at the first `:`, so a value may hold more) or `key` alone.
    pub fn parse(raw: &str) -> Result<AnnotationFilter, AnnotationError> {
        let bad = |reason| AnnotationError::BadFilter {
            filter: raw.to_owned(),
            reason,
        };
        let (key, value) = match raw.split_once(':') {
            Some((key, value)) => (key, Some(value)),
            None => (raw, None),
        };
        if !valid_key(key) {
            return Err(bad(
                "use key:value or key, the key 1 to 64 characters of [a-z0-9_.-]",
            ));
        }
        if value == Some("") {
            return Err(bad(
                "the value is empty; give the key alone to match any value",
            ));
        }
        Ok(AnnotationFilter {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }

    /// Parses every filter of a listing, at most [`MAX_FILTERS`].
    pub fn parse_all<S: AsRef<str>>(raw: &[S]) -> Result<Vec<AnnotationFilter>, AnnotationError> {
        if raw.len() > MAX_FILTERS {
            return Err(AnnotationError::TooManyFilters { count: raw.len() });
        }
        raw.iter()
            .map(|r| AnnotationFilter::parse(r.as_ref()))
            .collect()
    }
}

/// What a job builds in a few words, for lists: `crate@version` (with the target in
/// parentheses, if any) for a crate, else `branch@commit` (the commit cut to 12 characters),
/// either part alone if the other is missing. `None` when none of those keys is set. Each
/// value is cut to [`HEADLINE_PART_CHARS`] characters, so a list stays a list.
pub fn headline(annotations: &Annotations) -> Option<String> {
    let get = |key: &str, chars: usize| annotations.get(key).map(|v| cut(v, chars));
    let at = |name: Option<String>, version: Option<String>| match (name, version) {
        (Some(name), Some(version)) => Some(format!("{name}@{version}")),
        (name, version) => name.or(version),
    };
    if let Some(krate) = get("crate", HEADLINE_PART_CHARS) {
        let what = at(Some(krate), get("version", HEADLINE_PART_CHARS));
        return match get("target", HEADLINE_PART_CHARS) {
            Some(target) => what.map(|w| format!("{w} ({target})")),
            None => what,
        };
    }
    // A commit is shortened as git shortens it, without a mark.
    let commit = annotations
        .get("commit")
        .map(|c| c.chars().take(COMMIT_CHARS).collect());
    at(get("branch", HEADLINE_PART_CHARS), commit)
}

/// Longest part of a [`headline`], in characters.
pub const HEADLINE_PART_CHARS: usize = 40;
/// A commit in a [`headline`]: as long as `git log --oneline` shows it, about.
const COMMIT_CHARS: usize = 12;

fn cut(value: &str, chars: usize) -> String {
    match value.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// The digest the filter index holds for a value.
pub(crate) fn value_digest(value: &str) -> String {
    buildfleet_protocol::hex::encode(&Sha256::digest(value.as_bytes()))
}

/// Writes the index rows of a new job's annotations (the JSON copy goes in with the job).
pub(crate) fn insert(
    conn: &mut DbConnection,
    job: JobId,
    annotations: &Annotations,
) -> Result<(), StoreError> {
    for (key, value) in annotations {
        diesel::insert_into(job_annotations::table)
            .values((
                job_annotations::job_id.eq(job.0),
                job_annotations::key.eq(key),
                job_annotations::value.eq(value),
                job_annotations::value_sha256.eq(value_digest(value)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn good_annotations_pass() {
        let good = annotations(&[
            ("crate", "itoa"),
            ("version", "1.0.14"),
            ("target", "x86_64-unknown-linux-gnu"),
            ("links.docs", "https://docs.rs/itoa"),
            (
                "message",
                "Fix the parser\n\nIt read one byte too far.\r\n\tDetails.",
            ),
            ("k-9_x", &"v".repeat(MAX_VALUE_BYTES)),
        ]);
        assert_eq!(check(&good), Ok(()));
        assert_eq!(check(&Annotations::new()), Ok(()));
    }

    #[test]
    fn every_refusal_names_its_key() {
        let cases = [
            (annotations(&[("Crate", "x")]), "\"Crate\""),
            (annotations(&[("", "x")]), "\"\""),
            (annotations(&[("a b", "x")]), "\"a b\""),
            (annotations(&[("crate:x", "x")]), "\"crate:x\""),
            (annotations(&[(&"k".repeat(65), "x")]), &"k".repeat(65)),
            (annotations(&[("branch", "")]), "\"branch\""),
            (
                annotations(&[("commit", &"c".repeat(MAX_VALUE_BYTES + 1))]),
                "\"commit\"",
            ),
            (
                annotations(&[("message", &"m".repeat(MAX_MESSAGE_BYTES + 1))]),
                "\"message\"",
            ),
            (annotations(&[("author", "a\nb")]), "\"author\""),
            (annotations(&[("message", "nul\0")]), "\"message\""),
        ];
        for (bad, key) in cases {
            let error = check(&bad).expect_err("refused").to_string();
            assert!(error.contains(key), "{error} names {key}");
        }
        let many: Annotations = (0..=MAX_ANNOTATIONS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert_eq!(
            check(&many),
            Err(AnnotationError::TooMany {
                count: MAX_ANNOTATIONS + 1
            })
        );
    }

    #[test]
    fn a_long_value_is_measured_in_bytes() {
        // 512 two-byte characters are 1,024 bytes: at the limit; one more is over it.
        let at_limit = "é".repeat(MAX_VALUE_BYTES / 2);
        assert_eq!(check(&annotations(&[("author", &at_limit)])), Ok(()));
        let over = format!("{at_limit}x");
        assert!(check(&annotations(&[("author", &over)])).is_err());
    }

    #[test]
    fn headlines_say_what_is_built() {
        let cases = [
            (
                vec![("crate", "itoa"), ("version", "1.0.14")],
                Some("itoa@1.0.14"),
            ),
            (
                vec![
                    ("crate", "itoa"),
                    ("version", "1.0.14"),
                    ("target", "x86_64-unknown-linux-gnu"),
                    ("branch", "main"),
                ],
                Some("itoa@1.0.14 (x86_64-unknown-linux-gnu)"),
            ),
            (vec![("crate", "itoa")], Some("itoa")),
            (
                vec![
                    ("branch", "main"),
                    ("commit", "0123456789abcdef0123"),
                    ("author", "a"),
                ],
                Some("main@0123456789ab"),
            ),
            (vec![("commit", "abc")], Some("abc")),
            (vec![("author", "a"), ("message", "m")], None),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                headline(&annotations(&pairs)).as_deref(),
                expected,
                "{pairs:?}"
            );
        }
        let long = "é".repeat(HEADLINE_PART_CHARS + 5);
        let cut = headline(&annotations(&[("crate", &long)])).unwrap();
        assert_eq!(cut.chars().count(), HEADLINE_PART_CHARS + 1, "{cut}");
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn filters_parse_at_the_first_colon() {
        assert_eq!(
            AnnotationFilter::parse("crate:itoa").unwrap(),
            AnnotationFilter {
                key: "crate".into(),
                value: Some("itoa".into())
            }
        );
        assert_eq!(
            AnnotationFilter::parse("links.ci:https://ci.invalid/1").unwrap(),
            AnnotationFilter {
                key: "links.ci".into(),
                value: Some("https://ci.invalid/1".into())
            }
        );
        assert_eq!(
            AnnotationFilter::parse("crate").unwrap(),
            AnnotationFilter {
                key: "crate".into(),
                value: None
            }
        );
        for bad in ["", ":itoa", "Crate:itoa", "crate:", "a b:c"] {
            assert!(AnnotationFilter::parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["a:b"; MAX_FILTERS + 1];
        assert!(AnnotationFilter::parse_all(&many).is_err());
    }
}
