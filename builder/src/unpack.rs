//! Unpacking a source archive (`.crate`, `.tar.gz` or plain `.tar`) without letting it
//! write outside its directory or exhaust the disk.
//!
//! Rules: entry paths are relative with no `..`; no entry is created under (or over) a
//! symlink; symlink targets are relative, may start with `..` components that stay within
//! the tree, and have no `..` afterwards; hard-link targets are plain relative paths;
//! only files, directories and links are allowed (no devices, FIFOs or sparse files);
//! entry count and total size are bounded, and so is everything else read between two
//! files' data (headers, long names, extended and global headers, data of entries that
//! are not files), which the tar crate would otherwise read into memory or skip unbounded.
//!
//! The destination starts empty, so the only symlinks and directories in it are the ones
//! this archive created: the unpacker remembers them instead of asking the file system.
//! No `lstat`/`readlink` per path component and no `canonicalize` per entry (what the tar
//! crate's `unpack_in` does); a parent directory is created once.
//!
//! The archive file's SHA-256 is computed on the way through ([`Unpacked::archive_sha256`]),
//! so a cached source is re-verified by the one read that unpacks it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use buildfleet_protocol::{BuildErrorKind, Sha256Digest};
use sha2::{Digest, Sha256};
use tar::EntryType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    pub max_entries: u64,
    pub max_total_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unsafe archive: entry {path:?}: {reason}")]
    Unsafe { path: String, reason: &'static str },
    #[error("unsafe archive: more than {0} entries")]
    TooManyEntries(u64),
    #[error("unsafe archive: unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error(
        "unsafe archive: more than {0} bytes of headers, long names or extended headers \
         before an entry"
    )]
    HeaderTooLarge(u64),
    #[error("cannot read the archive: {0}")]
    Read(std::io::Error),
    #[error("cannot unpack entry {path:?}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl UnpackError {
    pub fn kind(&self) -> BuildErrorKind {
        match self {
            UnpackError::Write { .. } => BuildErrorKind::Internal,
            _ => BuildErrorKind::UnsafeArchive,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
    /// The directory builds run in: the archive's single top-level directory when it has
    /// one (as `.crate` files do), else `dest` itself.
    pub root: PathBuf,
    /// SHA-256 of the archive file's bytes, all of them, as read while unpacking.
    pub archive_sha256: Sha256Digest,
    /// The newest modification time recorded in the archive (seconds since the epoch; 0 for
    /// none): the same on every builder, so it is the build's `SOURCE_DATE_EPOCH`.
    pub newest_mtime: u64,
}

/// The raw archive file, hashed as it is read.
struct Hashing<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// What the archive created so far, relative to the destination.
#[derive(Default)]
struct Created {
    dirs: HashSet<PathBuf>,
    symlinks: HashSet<PathBuf>,
}

impl Created {
    /// Refuses a path whose parents or own path are symlinks the archive made: the entry's
    /// real location would differ from what was checked.
    fn ensure_no_symlink_on(&self, path: &Path) -> Result<(), &'static str> {
        if self.symlinks.is_empty() {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for component in path.components() {
            prefix.push(component);
            if self.symlinks.contains(&prefix) {
                return Err("the path goes through or replaces a symlink");
            }
        }
        Ok(())
    }

    /// Creates the parent directories of `path` not made yet.
    fn make_parents(&mut self, dest: &Path, path: &Path) -> std::io::Result<()> {
        let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        std::fs::create_dir_all(dest.join(parent))?;
        for ancestor in parent.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if !self.dirs.insert(ancestor.to_owned()) {
                break;
            }
        }
        Ok(())
    }
}

/// What the tar stream may hold between the end of one file's data and the start of the
/// next entry's data: its header, long name and link records, extended (pax) headers,
/// global headers and the data of entries that are not regular files. Real archives need a
/// few KiB (a long name is at most `PATH_MAX`); the tar crate reads long names and extended
/// headers into memory whole, so without this bound one record of gzipped zeros could make
/// it allocate gigabytes, and skipped data would cost unbounded decompression.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;

/// The decompressed archive, with a moving end: [`unpack`] lets the tar crate read the
/// current file's data plus [`MAX_HEADER_BYTES`], no further.
struct Bounded<R> {
    inner: R,
    read: u64,
    end: Rc<Cell<u64>>,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.end.get().saturating_sub(self.read);
        if room == 0 && !buf.is_empty() {
            self.hit.set(true);
            return Err(std::io::Error::other("archive header bytes over the limit"));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Unpacks `archive` into the existing, empty directory `dest`; on error `dest` may hold a
/// partial tree, which the caller removes with the job directory.
pub fn unpack(archive: &Path, dest: &Path, limits: UnpackLimits) -> Result<Unpacked, UnpackError> {
    let mut file = File::open(archive).map_err(UnpackError::Read)?;
    let mut magic = [0u8; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().map_err(UnpackError::Read)?;
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let consumed = Rc::new(Cell::new(0u64));
    let file = Hashing {
        inner: file,
        hasher: hasher.clone(),
        read: consumed.clone(),
    };
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let end = Rc::new(Cell::new(MAX_HEADER_BYTES));
    let hit = Rc::new(Cell::new(false));
    let reader = Bounded {
        inner: reader,
        read: 0,
        end: end.clone(),
        hit: hit.clone(),
    };
    // A read refused by `Bounded` reaches us as the tar crate's error; tell it apart.
    let read_error = |e| {
        if hit.get() {
            UnpackError::HeaderTooLarge(MAX_HEADER_BYTES)
        } else {
            UnpackError::Read(e)
        }
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);

    let mut created = Created::default();
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut newest_mtime = 0u64;
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        newest_mtime = newest_mtime.max(entry.header().mtime().unwrap_or(0));
        // Only a regular file's data counts as data (it is bounded by the size limit
        // below); anything else up to the next entry's data counts as header.
        let is_file = matches!(
            entry.header().entry_type(),
            EntryType::Regular | EntryType::Continuous
        );
        let data = if is_file {
            entry.size().saturating_add(511) / 512 * 512
        } else {
            0
        };
        end.set(
            entry
                .raw_file_position()
                .saturating_add(data)
                .saturating_add(MAX_HEADER_BYTES),
        );
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let path = entry.path().map_err(UnpackError::Read)?.into_owned();
        let shown = path.display().to_string();
        let unsafe_entry = |reason| UnpackError::Unsafe {
            path: shown.clone(),
            reason,
        };
        if !is_plain_relative(&path) {
            return Err(unsafe_entry("the path is absolute or contains '..'"));
        }
        let path = normalized(&path);
        created.ensure_no_symlink_on(&path).map_err(unsafe_entry)?;

        let mut link_target = None;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                bytes = bytes.saturating_add(entry.size());
                if bytes > limits.max_total_bytes {
                    return Err(UnpackError::TooLarge(limits.max_total_bytes));
                }
            }
            EntryType::Directory => {}
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| unsafe_entry("a symlink without a target"))?;
                if !symlink_stays_inside(&path, &target) {
                    return Err(unsafe_entry("the symlink points outside the archive"));
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| unsafe_entry("a hard link without a target"))?;
                if !is_plain_relative(&target) {
                    return Err(unsafe_entry("the hard link points outside the archive"));
                }
                let target = normalized(&target);
                created
                    .ensure_no_symlink_on(&target)
                    .map_err(unsafe_entry)?;
                link_target = Some(target);
            }
            // Metadata records the tar crate applies to the next entry itself.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            _ => {
                return Err(unsafe_entry(
                    "devices, FIFOs and sparse files are not allowed",
                ))
            }
        }

        // Only `.` components: the destination itself, which exists.
        if path.as_os_str().is_empty() {
            continue;
        }
        let write_error = |source| {
            if hit.get() {
                UnpackError::HeaderTooLarge(MAX_HEADER_BYTES)
            } else {
                UnpackError::Write {
                    path: shown.clone(),
                    source,
                }
            }
        };
        created.make_parents(dest, &path).map_err(write_error)?;
        let target = dest.join(&path);
        match link_target {
            // The tar crate would resolve a hard link's target against the working
            // directory outside `unpack_in`: link it here, inside `dest`.
            Some(link) => hard_link(&dest.join(link), &target).map_err(write_error)?,
            None => {
                entry.unpack(&target).map_err(write_error)?;
            }
        }
        match entry.header().entry_type() {
            EntryType::Symlink => {
                created.symlinks.insert(path);
            }
            EntryType::Directory => {
                created.dirs.insert(path);
            }
            _ => {}
        }
    }
    drop(tar);
    // The tar stream ends before the file does (end-of-archive blocks, the gzip trailer,
    // padding): hash the rest so the digest covers the whole file.
    let mut rest = File::open(archive).map_err(UnpackError::Read)?;
    rest.seek(SeekFrom::Start(consumed.get()))
        .map_err(UnpackError::Read)?;
    let mut hasher = Rc::try_unwrap(hasher)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| shared.borrow().clone());
    std::io::copy(&mut rest, &mut hasher).map_err(UnpackError::Read)?;
    Ok(Unpacked {
        entries,
        bytes,
        root: build_root(dest),
        archive_sha256: Sha256Digest::from_bytes(&hasher.finalize().into()),
        newest_mtime,
    })
}

/// A hard link at `link` to the existing `target`, replacing a file at `link`.
fn hard_link(target: &Path, link: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(target, link) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(link)?;
            std::fs::hard_link(target, link)
        }
        other => other,
    }
}

/// The normal components only (`a/./b` → `a/b`); the path was checked plain relative.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Relative, non-empty, only normal components (and `.`).
fn is_plain_relative(path: &Path) -> bool {
    path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// A symlink at `link` (relative to the root) may point to `target` if the target is
/// relative, its leading `..` components do not climb above the root, and it has no `..`
/// after its first normal component. Since no entry is created under a symlink, the
/// link's parents are real directories, so this lexical check is exact.
fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    let depth = link
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
        })
        .unwrap_or(0);
    let mut ups = 0usize;
    let mut seen_normal = false;
    for component in target.components() {
        match component {
            Component::ParentDir if !seen_normal => ups += 1,
            Component::Normal(_) => seen_normal = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    ups <= depth
}

fn build_root(dest: &Path) -> PathBuf {
    let Ok(read_dir) = std::fs::read_dir(dest) else {
        return dest.to_path_buf();
    };
    let children: Vec<_> = read_dir.filter_map(Result::ok).take(2).collect();
    match children.as_slice() {
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => only.path(),
        _ => dest.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_rules() {
        assert!(symlink_stays_inside(
            Path::new("a/b/link"),
            Path::new("../c")
        ));
        assert!(symlink_stays_inside(Path::new("a/link"), Path::new("b/c")));
        assert!(!symlink_stays_inside(Path::new("link"), Path::new("../x")));
        assert!(!symlink_stays_inside(
            Path::new("a/link"),
            Path::new("b/../../x")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a/link"),
            Path::new("/etc/passwd")
        ));
    }
}
