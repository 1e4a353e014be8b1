//! The source-archive unpacker: any bytes a source URL may serve, and archives built from
//! generated entries (paths with `..`, absolute paths, links, devices, odd sizes) so that the
//! fuzzer reaches the unpacker's rules rather than only the tar parser.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use bolero::generator::*;
use buildfleet_builder::unpack::{unpack, UnpackError, UnpackLimits};

/// Small limits, so that the bomb checks are reached by small inputs.
pub const LIMITS: UnpackLimits = UnpackLimits {
    max_entries: 64,
    max_total_bytes: 64 * 1024,
};

/// What a sentinel file outside the destination holds; it must survive every archive.
const SENTINEL: &[u8] = b"outside the destination\n";

/// Unpacks `bytes` as a source archive (gzip is detected by its magic, as the builder does)
/// into a fresh directory that has a sentinel directory beside it.
///
/// Invariants: no panic; nothing outside the destination is created, removed or changed;
/// every path in the destination, symlinks resolved, stays inside it; only regular files,
/// directories and symlinks are created; the bytes written stay within the limit; a success
/// reports counts within the limits and a root inside the destination.
pub fn check(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = dir.path().canonicalize().expect("a canonical temp dir");
    let archive = base.join("source.archive");
    std::fs::write(&archive, bytes).expect("write the archive");
    let outside = base.join("outside");
    std::fs::create_dir(&outside).expect("create the sentinel dir");
    std::fs::write(outside.join("keep"), SENTINEL).expect("write the sentinel");
    let dest = base.join("work").join("src");
    std::fs::create_dir_all(&dest).expect("create the destination");
    let before = listing(&base, &dest);

    let result = unpack(&archive, &dest, LIMITS);

    assert_eq!(
        listing(&base, &dest),
        before,
        "the archive changed something outside the destination ({result:?})"
    );
    assert_eq!(
        std::fs::read(outside.join("keep")).expect("the sentinel is still there"),
        SENTINEL
    );
    let written = check_tree(&dest);
    assert!(
        written <= LIMITS.max_total_bytes,
        "{written} bytes written, limit {} ({result:?})",
        LIMITS.max_total_bytes
    );
    match result {
        Ok(unpacked) => {
            assert!(unpacked.entries <= LIMITS.max_entries, "{unpacked:?}");
            assert!(unpacked.bytes <= LIMITS.max_total_bytes, "{unpacked:?}");
            assert!(
                unpacked.root == dest || unpacked.root.parent() == Some(dest.as_path()),
                "build root {:?} is not the destination or a child of it",
                unpacked.root
            );
            assert!(std::fs::symlink_metadata(&unpacked.root)
                .expect("the root exists")
                .is_dir());
        }
        Err(error) => {
            // Every refusal prints and maps to a build error kind.
            assert!(!error.to_string().is_empty());
            let _ = error.kind();
            if let UnpackError::Unsafe { reason, .. } = &error {
                assert!(!reason.is_empty());
            }
        }
    }
}

/// Every path under `base` outside `skip`, with what it is and (for files) its contents.
fn listing(base: &Path, skip: &Path) -> BTreeSet<(PathBuf, String)> {
    let mut found = BTreeSet::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            if path == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let what = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).expect("readlink"))
            } else {
                format!("file {:?}", std::fs::read(&path).expect("read"))
            };
            found.insert((path, what));
        }
    }
    found
}

/// Walks the destination without following links; returns the bytes held by its regular
/// files (each inode once, since hard links share one).
fn check_tree(dest: &Path) -> u64 {
    let mut inodes = BTreeSet::new();
    let mut bytes = 0u64;
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                let parent = path.parent().expect("a link has a parent");
                let lexical = normalize(&parent.join(&target));
                assert!(
                    lexical.starts_with(dest),
                    "symlink {path:?} -> {target:?} points outside {dest:?}"
                );
                if let Ok(real) = path.canonicalize() {
                    assert!(
                        real.starts_with(dest),
                        "symlink {path:?} resolves to {real:?}, outside {dest:?}"
                    );
                }
            } else if kind.is_file() {
                if inodes.insert(meta.ino()) {
                    bytes += meta.len();
                }
            } else {
                panic!("{path:?} is neither a file, a directory nor a symlink: {kind:?}");
            }
        }
    }
    bytes
}

/// `path` with `.` dropped and `..` applied lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// One path component, from a small alphabet so that paths collide and climb.
#[derive(Debug, Clone, Copy, TypeGenerator)]
pub enum Part {
    A,
    B,
    Link,
    Dot,
    DotDot,
    Empty,
    Long,
}

impl Part {
    fn text(self) -> &'static str {
        match self {
            Part::A => "a",
            Part::B => "b",
            Part::Link => "l",
            Part::Dot => ".",
            Part::DotDot => "..",
            Part::Empty => "",
            Part::Long => "a-rather-long-name-to-push-paths-past-the-ustar-limit",
        }
    }
}

#[derive(Debug, Clone, Copy, TypeGenerator)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    CharDevice,
    /// Any entry type byte, including the metadata records (`g`, `x`, `L`, `K`) and sparse.
    Raw(u8),
}

#[derive(Debug, Clone, TypeGenerator)]
pub struct GenEntry {
    #[generator(gen::<Vec<Part>>().with().len(0usize..6))]
    pub path: Vec<Part>,
    pub absolute: bool,
    pub kind: Kind,
    #[generator(gen::<Vec<Part>>().with().len(0usize..6))]
    pub link: Vec<Part>,
    pub link_absolute: bool,
    /// Data actually written.
    #[generator(gen::<u16>().with().bounds(0u16..=2048))]
    pub data_len: u16,
    /// When set, the size written in the header instead of `data_len` (a lie).
    pub declared_size: Option<u32>,
}

#[derive(Debug, Clone, TypeGenerator)]
pub struct GenArchive {
    #[generator(gen::<Vec<GenEntry>>().with().len(0usize..12))]
    pub entries: Vec<GenEntry>,
    pub gzip: bool,
    /// Cut the archive short by this many bytes.
    pub truncate: u16,
}

fn join(parts: &[Part], absolute: bool) -> String {
    let joined: Vec<&str> = parts.iter().map(|p| p.text()).collect();
    let joined = joined.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

impl GenArchive {
    /// The archive bytes: raw GNU headers, so that names the tar crate's builder refuses
    /// (`../x`, `/etc/x`) reach the unpacker as an attacker would write them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            let mut header = tar::Header::new_gnu();
            let path = join(&entry.path, entry.absolute);
            let link = join(&entry.link, entry.link_absolute);
            {
                let raw = header.as_old_mut();
                let n = path.len().min(raw.name.len());
                raw.name[..n].copy_from_slice(&path.as_bytes()[..n]);
                let n = link.len().min(raw.linkname.len());
                raw.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
            }
            let kind = match entry.kind {
                Kind::File => tar::EntryType::Regular,
                Kind::Dir => tar::EntryType::Directory,
                Kind::Symlink => tar::EntryType::Symlink,
                Kind::HardLink => tar::EntryType::Link,
                Kind::Fifo => tar::EntryType::Fifo,
                Kind::CharDevice => tar::EntryType::Char,
                Kind::Raw(byte) => tar::EntryType::new(byte),
            };
            header.set_entry_type(kind);
            header.set_mode(0o644);
            let data_len = usize::from(entry.data_len);
            header.set_size(entry.declared_size.map_or(data_len as u64, u64::from));
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            // Data: the path repeated, so long names in `L` records are plausible.
            out.extend(path.bytes().chain(std::iter::repeat(b'x')).take(data_len));
            out.extend(std::iter::repeat_n(0u8, (512 - data_len % 512) % 512));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out.truncate(out.len().saturating_sub(usize::from(self.truncate)));
        if self.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&out).expect("gzip in memory");
            gz.finish().expect("gzip in memory")
        } else {
            out
        }
    }
}

/// [`check`] on an archive built from generated entries.
pub fn check_generated(archive: &GenArchive) {
    check(&archive.to_bytes());
}
