//! Collecting a recipe's artifacts from the job's output directory: packing directories
//! (and cargo's release outputs) into tarballs, and digesting each file in one streaming
//! pass before it is uploaded.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use buildfleet_protocol::{BuildErrorKind, Sha256Digest};
use sha2::{Digest, Sha256};

use crate::recipes::{ArtifactRule, Pack};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {name:?}: {path} does not exist")]
    Missing { name: String, path: PathBuf },
    #[error("artifact {name:?}: {path} is not a regular file")]
    NotAFile { name: String, path: PathBuf },
    #[error("artifact {name:?}: {path} leads outside the output directory")]
    Escapes { name: String, path: PathBuf },
    #[error("no release outputs in {0}")]
    NoCargoOutputs(PathBuf),
    #[error("cannot pack or read artifact {name:?}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

impl ArtifactError {
    pub fn kind(&self) -> BuildErrorKind {
        match self {
            ArtifactError::Io { .. } => BuildErrorKind::Internal,
            _ => BuildErrorKind::ArtifactMissing,
        }
    }
}

/// A file ready to upload, with the size and digest it will be declared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedArtifact {
    pub name: String,
    pub file: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// The artifact names `rules` produce, for plans (before anything is built).
pub fn planned_names(rules: &[ArtifactRule], src_root: &Path) -> Vec<String> {
    rules
        .iter()
        .map(|rule| match rule {
            ArtifactRule::Declared(declared) => declared.name.clone(),
            ArtifactRule::CargoRelease => cargo_release_name(src_root),
        })
        .collect()
}

/// Collects every artifact of `rules` from `out_dir`, packing into `staging` as needed.
pub fn collect(
    rules: &[ArtifactRule],
    out_dir: &Path,
    src_root: &Path,
    staging: &Path,
) -> Result<Vec<PreparedArtifact>, ArtifactError> {
    std::fs::create_dir_all(staging).map_err(|source| ArtifactError::Io {
        name: String::new(),
        source,
    })?;
    let mut prepared = Vec::new();
    for rule in rules {
        match rule {
            ArtifactRule::Declared(declared) => {
                let name = declared.name.clone();
                let path = contained(out_dir, &declared.path, &name)?;
                let file = match declared.pack {
                    Pack::File => {
                        if !path.is_file() {
                            return Err(ArtifactError::NotAFile { name, path });
                        }
                        path
                    }
                    Pack::TarGz => {
                        let packed = staging.join(&name);
                        pack_tree(&path, &packed).map_err(|source| ArtifactError::Io {
                            name: name.clone(),
                            source,
                        })?;
                        packed
                    }
                };
                prepared.push(digested(name, file)?);
            }
            ArtifactRule::CargoRelease => {
                let name = cargo_release_name(src_root);
                let release = out_dir.join("target").join("release");
                let files =
                    cargo_release_outputs(&release).map_err(|source| ArtifactError::Io {
                        name: name.clone(),
                        source,
                    })?;
                if files.is_empty() {
                    return Err(ArtifactError::NoCargoOutputs(release));
                }
                let packed = staging.join(&name);
                pack_files(&files, &packed).map_err(|source| ArtifactError::Io {
                    name: name.clone(),
                    source,
                })?;
                prepared.push(digested(name, packed)?);
            }
        }
    }
    Ok(prepared)
}

/// `out_dir/relative`, refusing symlinks that lead out of `out_dir` (a build could plant
/// one to exfiltrate host files as an artifact).
fn contained(out_dir: &Path, relative: &str, name: &str) -> Result<PathBuf, ArtifactError> {
    let path = out_dir.join(relative);
    let canonical = path.canonicalize().map_err(|_| ArtifactError::Missing {
        name: name.to_owned(),
        path: path.clone(),
    })?;
    let root = out_dir.canonicalize().map_err(|source| ArtifactError::Io {
        name: name.to_owned(),
        source,
    })?;
    if !canonical.starts_with(&root) {
        return Err(ArtifactError::Escapes {
            name: name.to_owned(),
            path,
        });
    }
    Ok(canonical)
}

fn digested(name: String, file: PathBuf) -> Result<PreparedArtifact, ArtifactError> {
    let (size, sha256) = digest_file(&file).map_err(|source| ArtifactError::Io {
        name: name.clone(),
        source,
    })?;
    Ok(PreparedArtifact {
        name,
        file,
        size,
        sha256,
    })
}

/// Size and SHA-256 of a file, read once in fixed-size chunks.
pub fn digest_file(path: &Path) -> std::io::Result<(u64, Sha256Digest)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, Sha256Digest::from_bytes(&hasher.finalize().into())))
}

/// A tarball of `path` (a file or a directory, under its own base name); symlinks are
/// stored as symlinks, never followed. Entries go in name order.
fn pack_tree(path: &Path, dest: &Path) -> std::io::Result<()> {
    let base = path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("artifact"));
    let mut tar = tar_gz_writer(dest)?;
    tar.follow_symlinks(false);
    append_sorted(&mut tar, path, &base)?;
    tar.into_inner()?
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

/// `path` under the name `name`, and a directory's entries after it in name order: the
/// order `read_dir` gives differs between file systems and runs, and would change the bytes.
fn append_sorted<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    tar.append_path_with_name(path, name)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mut children = std::fs::read_dir(path)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    children.sort();
    for child in children {
        append_sorted(tar, &path.join(&child), &name.join(&child))?;
    }
    Ok(())
}

fn pack_files(files: &[PathBuf], dest: &Path) -> std::io::Result<()> {
    let mut tar = tar_gz_writer(dest)?;
    for file in files {
        if let Some(name) = file.file_name() {
            tar.append_path_with_name(file, name)?;
        }
    }
    tar.into_inner()?
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

fn tar_gz_writer(
    dest: &Path,
) -> std::io::Result<tar::Builder<flate2::write::GzEncoder<BufWriter<File>>>> {
    let file = BufWriter::new(File::create(dest)?);
    // Reproducible bytes: no owner, no times (the gzip header's time is 0 too), modes 644 or
    // 755, so the same outputs pack to the same archive on every builder.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    tar.mode(tar::HeaderMode::Deterministic);
    Ok(tar)
}

/// The executables at the top of cargo's release directory; for a crate without binaries,
/// its libraries (`.rlib`, `.a`, `.so`) so a library crate still produces an artifact.
fn cargo_release_outputs(release: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut executables = Vec::new();
    let mut libraries = Vec::new();
    for entry in std::fs::read_dir(release)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(extension, "rlib" | "a" | "so") {
            libraries.push(path);
        } else if extension.is_empty() && meta.permissions().mode() & 0o111 != 0 {
            executables.push(path);
        }
    }
    let mut chosen = if executables.is_empty() {
        libraries
    } else {
        executables
    };
    chosen.sort();
    Ok(chosen)
}

/// `<crate>-<version>-<arch>-<os>.tar.gz`, or `release.tar.gz` if the manifest is unreadable.
fn cargo_release_name(src_root: &Path) -> String {
    let package = std::fs::read_to_string(src_root.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|manifest| {
            let package = manifest.get("package")?.as_table()?;
            let name = package.get("name")?.as_str()?.to_owned();
            let version = package.get("version")?.as_str()?.to_owned();
            Some((name, version))
        });
    let name = match package {
        Some((name, version)) => format!(
            "{name}-{version}-{}-{}.tar.gz",
            std::env::consts::ARCH,
            std::env::consts::OS
        ),
        None => "release.tar.gz".to_owned(),
    };
    if crate::recipes::validate_artifact_name(&name).is_ok() {
        name
    } else {
        "release.tar.gz".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A directory tree written in the given order, its files stamped with `mtime`.
    fn tree(root: &Path, order: &[&str], mtime: SystemTime) {
        for name in order {
            let path = root.join("doc").join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
            std::fs::write(&path, format!("contents of {name}")).expect("write");
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(mtime))
                .expect("set mtime");
        }
    }

    fn packed_doc(order: &[&str], mtime: SystemTime) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path(), order, mtime);
        let dest = dir.path().join("doc.tar.gz");
        pack_tree(&dir.path().join("doc"), &dest).expect("pack");
        std::fs::read(dest).expect("read the archive")
    }

    #[test]
    fn the_same_tree_packs_to_the_same_bytes_whatever_its_times_and_order() {
        let names = ["b/z.html", "a.html", "b/y.html", "c/d/e.html"];
        let mut reversed = names;
        reversed.reverse();
        let first = packed_doc(&names, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let second = packed_doc(&reversed, SystemTime::now());
        assert_eq!(first, second, "two packings of one tree differ");

        let different = packed_doc(&["a.html", "b/z.html"], SystemTime::now());
        assert_ne!(
            first, different,
            "a different tree packed to the same bytes"
        );
    }

    #[test]
    fn packed_entries_are_in_name_order_without_owner_or_time() {
        let bytes = packed_doc(&["z.txt", "a.txt", "m/n.txt"], SystemTime::now());
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.gid().expect("gid"), 0);
            assert!(
                header.mtime().expect("mtime") < 1_200_000_000,
                "a real mtime leaked"
            );
            names.push(entry.path().expect("path").display().to_string());
        }
        assert_eq!(
            names,
            ["doc", "doc/a.txt", "doc/m", "doc/m/n.txt", "doc/z.txt"]
        );
    }
}
