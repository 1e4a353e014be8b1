//! The evidence of an unreproducible job: which artifacts' digests differ between its runs,
//! and for a tar.gz artifact which of its files differ (size and SHA-256 per run) with a
//! unified diff of the text files among them. Everything is bounded: the bytes read out of
//! an archive, the files listed, the size of a text file diffed and of each diff, so a
//! hostile artifact cannot make the backend hold much.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use buildfleet_api::{ArchiveEntry, ArtifactDiff, EntryDiff, ReproductionEvidence, RunArtifact};
use sha2::{Digest, Sha256};

use crate::storage::Storage;

/// Differing files listed per artifact.
pub const MAX_ENTRY_DIFFS: usize = 200;
/// A file above this size is compared by digest only, never diffed.
pub const MAX_TEXT_BYTES: u64 = 64 * 1024;
/// A text diff longer than this is cut (and says so).
pub const MAX_DIFF_BYTES: usize = 8 * 1024;
/// Bytes read out of one archive (decompressed) before the listing stops.
pub const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
/// Entries read out of one archive before the listing stops.
pub const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// One run's artifacts, with where each blob is stored (`None`: gone, e.g. expired).
#[derive(Debug, Clone)]
pub struct RunBlobs {
    pub run: i32,
    pub artifacts: Vec<RunArtifact>,
    pub storage_keys: BTreeMap<String, String>,
}

/// Whether every run produced the same artifacts (names, sizes and digests).
pub fn all_agree(runs: &[&[RunArtifact]]) -> bool {
    let mut sets = runs.iter().map(|artifacts| {
        let mut sorted = artifacts.to_vec();
        sorted.sort();
        sorted
    });
    match sets.next() {
        None => true,
        Some(first) => sets.all(|other| other == first),
    }
}

/// The evidence that `runs` disagree (their artifacts as recorded, blobs read from
/// `storage`).
pub fn evidence(storage: &dyn Storage, runs: &[RunBlobs]) -> ReproductionEvidence {
    let names: BTreeSet<&str> = runs
        .iter()
        .flat_map(|r| r.artifacts.iter().map(|a| a.name.as_str()))
        .collect();
    let mut diffs = Vec::new();
    for name in names {
        let digests: Vec<Option<String>> = runs
            .iter()
            .map(|r| {
                r.artifacts
                    .iter()
                    .find(|a| a.name == name)
                    .map(|a| a.sha256.clone())
            })
            .collect();
        if digests.windows(2).all(|pair| pair.first() == pair.last()) {
            continue;
        }
        diffs.push(artifact_diff(storage, runs, name, digests));
    }
    let summary = summarise(runs, &diffs);
    ReproductionEvidence {
        summary,
        artifacts: diffs,
        failure: None,
    }
}

fn summarise(runs: &[RunBlobs], diffs: &[ArtifactDiff]) -> String {
    let numbers: Vec<String> = runs.iter().map(|r| r.run.to_string()).collect();
    let names: Vec<&str> = diffs.iter().map(|d| d.name.as_str()).collect();
    let files: usize = diffs.iter().map(|d| d.entries.len()).sum();
    let files = if files > 0 {
        format!(" ({files} file(s) inside differ)")
    } else {
        String::new()
    };
    format!(
        "unreproducible: the artifacts of runs {} differ: {}{files}",
        numbers.join(", "),
        names.join(", ")
    )
}

fn artifact_diff(
    storage: &dyn Storage,
    runs: &[RunBlobs],
    name: &str,
    sha256: Vec<Option<String>>,
) -> ArtifactDiff {
    let mut diff = ArtifactDiff {
        name: name.to_owned(),
        sha256,
        entries: Vec::new(),
        entries_truncated: false,
        note: None,
    };
    let mut listings = Vec::with_capacity(runs.len());
    for run in runs {
        let listing = match run.storage_keys.get(name) {
            None => Ok(None),
            Some(key) => list_archive(storage, key).map(Some),
        };
        match listing {
            Ok(listing) => listings.push(listing),
            Err(why) => {
                diff.note = Some(format!(
                    "run {}: its files cannot be listed: {why}",
                    run.run
                ));
                return diff;
            }
        }
    }
    let paths: BTreeSet<&str> = listings
        .iter()
        .flatten()
        .flat_map(|l| l.entries.keys().map(String::as_str))
        .collect();
    for path in paths {
        let found: Vec<Option<&Listed>> = listings
            .iter()
            .map(|l| l.as_ref().and_then(|l| l.entries.get(path)))
            .collect();
        let first = found.first().copied().flatten().map(|l| &l.entry);
        if found.iter().all(|f| f.map(|l| &l.entry) == first) {
            continue;
        }
        if diff.entries.len() == MAX_ENTRY_DIFFS {
            diff.entries_truncated = true;
            break;
        }
        diff.entries.push(EntryDiff {
            path: path.to_owned(),
            runs: found.iter().map(|f| f.map(|l| l.entry.clone())).collect(),
            text_diff: text_diff(&found),
        });
    }
    let cut: Vec<String> = listings
        .iter()
        .zip(runs)
        .filter_map(|(l, run)| {
            l.as_ref()
                .and_then(|l| l.stopped.as_ref())
                .map(|why| format!("run {}: {why}", run.run))
        })
        .collect();
    if !cut.is_empty() {
        diff.note = Some(format!("listing stopped early: {}", cut.join("; ")));
    }
    diff
}

/// A unified diff of the first run's text against the first run that differs, when both are
/// small text files.
fn text_diff(found: &[Option<&Listed>]) -> Option<String> {
    let first = found.first().copied().flatten()?;
    let other = found.iter().flatten().find(|l| l.entry != first.entry)?;
    let (a, b) = (first.text.as_deref()?, other.text.as_deref()?);
    let diff = similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .to_string();
    Some(bounded(diff))
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_DIFF_BYTES {
        let mut cut = MAX_DIFF_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (diff cut)\n");
    }
    text
}

#[derive(Debug)]
struct Listed {
    entry: ArchiveEntry,
    /// The contents of a small text file.
    text: Option<String>,
}

#[derive(Debug, Default)]
struct Listing {
    entries: BTreeMap<String, Listed>,
    /// Why the listing ended before the archive did.
    stopped: Option<String>,
}

/// Lists a tar.gz blob: every entry's kind, size and SHA-256, and the text of small text
/// files. An artifact that is not a tar.gz is an error (the caller notes it).
fn list_archive(storage: &dyn Storage, key: &str) -> Result<Listing, String> {
    let file = storage
        .open(key)
        .map_err(|e| format!("reading the blob: {e}"))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz.take(MAX_ARCHIVE_BYTES));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar.gz archive: {e}"))?;
    let mut listing = Listing::default();
    for entry in entries {
        if listing.entries.len() == MAX_ARCHIVE_ENTRIES {
            listing.stopped = Some(format!("over {MAX_ARCHIVE_ENTRIES} entries"));
            break;
        }
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) if listing.entries.is_empty() => {
                return Err(format!("not a tar.gz archive: {e}"))
            }
            Err(e) => {
                listing.stopped = Some(format!("unreadable past this point: {e}"));
                break;
            }
        };
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        let size = header.size().unwrap_or(0);
        let kind = header.entry_type();
        let (kind, hashed) = if kind.is_file() {
            ("file".to_owned(), true)
        } else if kind.is_dir() {
            ("dir".to_owned(), false)
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let what = if kind.is_symlink() {
                "symlink"
            } else {
                "hardlink"
            };
            (format!("{what} -> {target}"), false)
        } else {
            (format!("{kind:?}").to_lowercase(), false)
        };
        let mut text = None;
        let sha256 = if hashed {
            let mut hasher = Sha256::new();
            let mut kept = Vec::new();
            let mut buffer = [0u8; 16 * 1024];
            loop {
                let n = match entry.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        listing.stopped = Some(format!("{path}: {e}"));
                        return Ok(listing);
                    }
                };
                let chunk = buffer.get(..n).unwrap_or_default();
                hasher.update(chunk);
                if size <= MAX_TEXT_BYTES {
                    kept.extend_from_slice(chunk);
                }
            }
            if size <= MAX_TEXT_BYTES && !kept.contains(&0) {
                text = String::from_utf8(kept).ok();
            }
            Some(hex::encode(hasher.finalize()))
        } else {
            None
        };
        listing.entries.insert(
            path,
            Listed {
                entry: ArchiveEntry { size, sha256, kind },
                text,
            },
        );
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStorage;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (path, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, path, *body).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn put(storage: &FsStorage, key: &str, bytes: &[u8]) -> RunArtifact {
        use std::io::Write as _;
        let mut blob = storage.create_pending().unwrap();
        blob.file.write_all(bytes).unwrap();
        storage.commit(blob, key).unwrap();
        RunArtifact {
            name: "out.tar.gz".into(),
            size: bytes.len() as i64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn differing_archives_name_their_differing_files_and_diff_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let one = tar_gz(&[
            ("bin/tool", b"\x00\x01same"),
            ("stamp.txt", b"built\nat 1\nend\n"),
            ("only-one", b"x"),
        ]);
        let two = tar_gz(&[
            ("bin/tool", b"\x00\x01same"),
            ("stamp.txt", b"built\nat 2\nend\n"),
        ]);
        let a = put(&storage, "a/out.tar.gz", &one);
        let b = put(&storage, "b/out.tar.gz", &two);
        let runs = [
            RunBlobs {
                run: 1,
                artifacts: vec![a.clone()],
                storage_keys: BTreeMap::from([("out.tar.gz".into(), "a/out.tar.gz".into())]),
            },
            RunBlobs {
                run: 2,
                artifacts: vec![b.clone()],
                storage_keys: BTreeMap::from([("out.tar.gz".into(), "b/out.tar.gz".into())]),
            },
        ];
        let (one_a, one_b) = (vec![a.clone()], vec![b.clone()]);
        assert!(!all_agree(&[&one_a, &one_b]));
        assert!(all_agree(&[&one_a, &one_a]));
        let evidence = evidence(&storage, &runs);
        assert_eq!(evidence.artifacts.len(), 1);
        let diff = &evidence.artifacts[0];
        assert_eq!(diff.sha256, vec![Some(a.sha256), Some(b.sha256)]);
        let paths: Vec<&str> = diff.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["only-one", "stamp.txt"], "bin/tool is the same");
        assert!(diff.entries[0].runs[1].is_none());
        let text = diff.entries[1].text_diff.as_deref().unwrap();
        assert!(text.contains("-at 1\n+at 2\n"), "{text}");
        assert!(
            evidence.summary.contains("runs 1, 2 differ: out.tar.gz"),
            "{}",
            evidence.summary
        );
    }

    #[test]
    fn an_artifact_that_is_no_archive_is_compared_by_digest_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let a = put(&storage, "a/x", b"random one");
        let b = put(&storage, "b/x", b"random two");
        let run = |n, artifact: &RunArtifact, key: &str| RunBlobs {
            run: n,
            artifacts: vec![artifact.clone()],
            storage_keys: BTreeMap::from([("out.tar.gz".into(), key.into())]),
        };
        let evidence = evidence(&storage, &[run(1, &a, "a/x"), run(2, &b, "b/x")]);
        let diff = &evidence.artifacts[0];
        assert!(diff.entries.is_empty());
        assert!(diff.note.as_deref().unwrap().contains("cannot be listed"));
    }
}
