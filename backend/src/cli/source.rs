//! Where a submitted job's source comes from: a local directory (packed into a gzipped
//! tarball in a temporary file), a local archive, or a published crate (from the local
//! cargo cache, else downloaded). Everything streams through files: constant memory.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use super::exit::CliError;

/// Top-level names a directory upload leaves out: build output and VCS history.
const SKIPPED_TOP_LEVEL: &[&str] = &["target"];
const SKIPPED_ANYWHERE: &[&str] = &[".git"];

/// An archive on disk, ready to upload. A temporary file is deleted when this is dropped.
pub struct LocalArchive {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// What it is, for messages ("packed ./src (12 files)", "cached crate …").
    pub description: String,
    _temp: Option<NamedTempFile>,
}

/// Counts and hashes what passes through to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `dir` as `<dir name>/…` into a gzipped tarball. Entries are sorted and carry no
/// owner or time, so the same tree always gives the same digest (and the backend, which
/// stores sources by digest, keeps it once).
pub fn pack_directory(dir: &Path) -> Result<LocalArchive, CliError> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?;
    let prefix = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .unwrap_or("source")
        .to_owned();
    let temp = tempfile::Builder::new()
        .prefix("buildfleet-source-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| CliError::io("creating a temporary file", e))?;
    let file = temp
        .reopen()
        .map_err(|e| CliError::io("opening the temporary file", e))?;
    let writer = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    let mut files = 0usize;
    let packing = |e: io::Error| CliError::io(format!("packing {}", dir.display()), e);
    let mut top = directory_header();
    tar.append_data(&mut top, &prefix, io::empty())
        .map_err(packing)?;
    append_tree(
        &mut tar,
        &canonical,
        Path::new(""),
        Path::new(&prefix),
        &mut files,
    )
    .map_err(packing)?;
    let encoder = tar.into_inner().map_err(packing)?;
    let mut writer = encoder.finish().map_err(packing)?;
    writer.flush().map_err(packing)?;
    Ok(LocalArchive {
        path: temp.path().to_owned(),
        sha256: hex::encode(writer.hasher.finalize()),
        size: writer.written,
        description: format!("packed {} ({files} files)", dir.display()),
        _temp: Some(temp),
    })
}

/// A header with no owner and no time; a directory until changed.
fn directory_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header
}

fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    relative: &Path,
    prefix: &Path,
    files: &mut usize,
) -> io::Result<()> {
    let mut entries = std::fs::read_dir(root.join(relative))?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if SKIPPED_ANYWHERE.contains(&name_str.as_ref())
            || (relative.as_os_str().is_empty() && SKIPPED_TOP_LEVEL.contains(&name_str.as_ref()))
        {
            continue;
        }
        let path = relative.join(&name);
        let full = root.join(&path);
        let archived = prefix.join(&path);
        let metadata = std::fs::symlink_metadata(&full)?;
        let mut header = directory_header();
        let kind = metadata.file_type();
        if kind.is_dir() {
            tar.append_data(&mut header, &archived, io::empty())?;
            append_tree(tar, root, &path, prefix, files)?;
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let executable = metadata.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(metadata.len());
            tar.append_data(&mut header, &archived, File::open(&full)?)?;
            *files += 1;
        } else if kind.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &archived, std::fs::read_link(&full)?)?;
        }
        // Sockets, FIFOs and devices are not sources; builders would refuse them anyway.
    }
    Ok(())
}

/// SHA-256 and size of a file, read in chunks.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// A local archive file, uploaded as it is.
pub fn archive_file(path: &Path) -> Result<LocalArchive, CliError> {
    let (sha256, size) =
        hash_file(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    Ok(LocalArchive {
        path: path.to_owned(),
        sha256,
        size,
        description: format!("archive {}", path.display()),
        _temp: None,
    })
}

/// `name@version` of a published crate.
pub fn parse_crate(spec: &str) -> Result<(String, String), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--crate {spec:?}: expected NAME@VERSION, e.g. serde@1.0.200"
        ))
    };
    let (name, version) = spec.split_once('@').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    let version_ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'));
    if !(name_ok && version_ok) {
        return Err(bad());
    }
    Ok((name.to_owned(), version.to_owned()))
}

/// Cargo's home: `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// `$CARGO_HOME/registry/cache/*/<name>-<version>.crate`, if cargo has fetched it before.
pub fn cached_crate(name: &str, version: &str) -> Option<PathBuf> {
    let cache = cargo_home()?.join("registry").join("cache");
    let file = format!("{name}-{version}.crate");
    let mut registries: Vec<_> = std::fs::read_dir(cache).ok()?.flatten().collect();
    registries.sort_by_key(|e| e.file_name());
    registries
        .into_iter()
        .map(|registry| registry.path().join(&file))
        .find(|candidate| candidate.is_file())
}

/// Downloads `<base>/<name>/<name>-<version>.crate` into a temporary file.
pub async fn download_crate(
    client: &awc::Client,
    base: &str,
    name: &str,
    version: &str,
) -> Result<LocalArchive, CliError> {
    let url = format!(
        "{}/{name}/{name}-{version}.crate",
        base.trim_end_matches('/')
    );
    let not_cached = || {
        let cache = cargo_home().map_or_else(
            || "the cargo cache".to_owned(),
            |h| h.join("registry/cache/*/").display().to_string(),
        );
        format!("{name}@{version} is not in {cache}")
    };
    let mut response = client.get(&url).send().await.map_err(|e| {
        CliError::Network(format!(
            "{}, and downloading {url} failed: {e}",
            not_cached()
        ))
    })?;
    let status = response.status();
    if status.as_u16() == 404 || status.as_u16() == 403 {
        return Err(CliError::Api {
            status: status.as_u16(),
            code: "crate_not_found".into(),
            message: format!("{} and {url} does not exist", not_cached()),
        });
    }
    if !status.is_success() {
        return Err(CliError::Network(format!(
            "{}, and downloading {url} answered HTTP {status}",
            not_cached()
        )));
    }
    let temp = tempfile::Builder::new()
        .prefix("buildfleet-crate-")
        .suffix(".crate")
        .tempfile()
        .map_err(|e| CliError::io("creating a temporary file", e))?;
    let file = temp
        .reopen()
        .map_err(|e| CliError::io("opening the temporary file", e))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| CliError::Network(format!("downloading {url}: {e}")))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| CliError::io("writing the temporary file", e))?;
    }
    file.flush()
        .await
        .map_err(|e| CliError::io("writing the temporary file", e))?;
    Ok(LocalArchive {
        path: temp.path().to_owned(),
        sha256: hex::encode(hasher.finalize()),
        size,
        description: format!("crate {name}@{version} from {url}"),
        _temp: Some(temp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_specs_parse() {
        assert_eq!(
            parse_crate("serde@1.0.200").unwrap(),
            ("serde".to_owned(), "1.0.200".to_owned())
        );
        assert!(parse_crate("serde").is_err());
        assert!(parse_crate("../x@1").is_err());
        assert!(parse_crate("x@1/2").is_err());
    }

    #[test]
    fn packing_is_deterministic_and_skips_build_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("demo");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(root.join("target/debug/big"), "x").unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref").unwrap();
        let first = pack_directory(&root).unwrap();
        let second = pack_directory(&root).unwrap();
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(
            hash_file(&first.path).unwrap(),
            (first.sha256.clone(), first.size)
        );

        let decoder = flate2::read::GzDecoder::new(File::open(&first.path).unwrap());
        let mut names: Vec<String> = tar::Archive::new(decoder)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["demo", "demo/Cargo.toml", "demo/src", "demo/src/main.rs"]
        );
    }
}
