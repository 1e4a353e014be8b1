//! Unpack safety: archives crafted with the tar crate's raw header API, as an attacker
//! would write them (the high-level API refuses to build most of these).

use std::path::Path;

use buildfleet_builder::unpack::{unpack, UnpackError, UnpackLimits};
use buildfleet_protocol::BuildErrorKind;
use tar::{EntryType, Header};

const LIMITS: UnpackLimits = UnpackLimits {
    max_entries: 100,
    max_total_bytes: 1 << 20,
};

struct Entry<'a> {
    path: &'a str,
    kind: EntryType,
    link: Option<&'a str>,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        path,
        kind: EntryType::Regular,
        link: None,
        data,
    }
}

/// Writes the header bytes directly so paths like `../x` and `/etc/x` reach the archive.
fn raw_archive(entries: &[Entry<'_>], gzip: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = Header::new_old();
        {
            let raw = header.as_old_mut();
            raw.name = [0; 100];
            raw.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
            if let Some(link) = entry.link {
                raw.linkname = [0; 100];
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_mode(0o644);
        header.set_size(entry.data.len() as u64);
        header.set_entry_type(entry.kind);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(entry.data);
        let padding = (512 - entry.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, padding));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    if gzip {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&out).unwrap();
        gz.finish().unwrap()
    } else {
        out
    }
}

fn try_unpack(
    entries: &[Entry<'_>],
    limits: UnpackLimits,
) -> (
    tempfile::TempDir,
    Result<buildfleet_builder::unpack::Unpacked, UnpackError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("source.archive");
    std::fs::write(&archive, raw_archive(entries, true)).unwrap();
    let dest = dir.path().join("src");
    std::fs::create_dir(&dest).unwrap();
    let result = unpack(&archive, &dest, limits);
    (dir, result)
}

fn assert_unsafe(result: Result<buildfleet_builder::unpack::Unpacked, UnpackError>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.kind(), BuildErrorKind::UnsafeArchive, "{what}: {err}");
}

fn nothing_outside(dir: &Path) {
    // Only the archive and the destination directory may exist next to each other.
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["source.archive", "src"],
        "an entry escaped the destination"
    );
}

#[test]
fn a_normal_crate_unpacks_into_its_top_level_directory() {
    let entries = [
        Entry {
            path: "pkg-1.0.0/",
            kind: EntryType::Directory,
            link: None,
            data: b"",
        },
        file("pkg-1.0.0/Cargo.toml", b"[package]\nname = \"pkg\"\n"),
        file("pkg-1.0.0/src/lib.rs", b"pub fn f() {}\n"),
        Entry {
            path: "pkg-1.0.0/src/alias.rs",
            kind: EntryType::Symlink,
            link: Some("lib.rs"),
            data: b"",
        },
        Entry {
            path: "pkg-1.0.0/README",
            kind: EntryType::Symlink,
            link: Some("src/../Cargo.toml"),
            data: b"",
        },
    ];
    // The last symlink has `..` after a normal component: refused even though it stays inside.
    let (_dir, result) = try_unpack(&entries[..4], LIMITS);
    let unpacked = result.expect("safe archive");
    assert_eq!(unpacked.entries, 4);
    assert!(unpacked.root.ends_with("pkg-1.0.0"));
    assert!(unpacked.root.join("src/lib.rs").is_file());
    assert_unsafe(
        try_unpack(&entries, LIMITS).1,
        "`..` in the middle of a symlink target",
    );
}

#[test]
fn path_traversal_is_refused() {
    let (dir, result) = try_unpack(&[file("../escaped.txt", b"x")], LIMITS);
    assert_unsafe(result, "`..` entry");
    nothing_outside(dir.path());
    let (dir, result) = try_unpack(&[file("pkg/../../escaped.txt", b"x")], LIMITS);
    assert_unsafe(result, "nested `..` entry");
    nothing_outside(dir.path());
}

#[test]
fn absolute_paths_are_refused() {
    let (_dir, result) = try_unpack(&[file("/tmp/buildfleet-absolute-test.txt", b"x")], LIMITS);
    assert_unsafe(result, "absolute entry");
    assert!(!Path::new("/tmp/buildfleet-absolute-test.txt").exists());
}

#[test]
fn symlinks_escaping_the_tree_are_refused() {
    let escaping = [Entry {
        path: "pkg/link",
        kind: EntryType::Symlink,
        link: Some("/etc"),
        data: b"",
    }];
    assert_unsafe(try_unpack(&escaping, LIMITS).1, "absolute symlink");
    let escaping = [Entry {
        path: "pkg/link",
        kind: EntryType::Symlink,
        link: Some("../../outside"),
        data: b"",
    }];
    assert_unsafe(
        try_unpack(&escaping, LIMITS).1,
        "relative symlink climbing out",
    );

    // A harmless-looking symlink, then a file written through it.
    let through = [
        Entry {
            path: "pkg/",
            kind: EntryType::Directory,
            link: None,
            data: b"",
        },
        Entry {
            path: "pkg/dir",
            kind: EntryType::Symlink,
            link: Some("."),
            data: b"",
        },
        file("pkg/dir/file.txt", b"x"),
    ];
    let (dir, result) = try_unpack(&through, LIMITS);
    assert_unsafe(result, "write through a symlink");
    nothing_outside(dir.path());
}

#[test]
fn hardlinks_escaping_the_tree_are_refused() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let absolute = [Entry {
        path: "pkg/passwd",
        kind: EntryType::Link,
        link: Some(&target),
        data: b"",
    }];
    assert_unsafe(try_unpack(&absolute, LIMITS).1, "absolute hard link");
    let relative = [Entry {
        path: "pkg/passwd",
        kind: EntryType::Link,
        link: Some("../../etc/passwd"),
        data: b"",
    }];
    assert_unsafe(
        try_unpack(&relative, LIMITS).1,
        "relative hard link climbing out",
    );

    let inside = [
        file("pkg/a", b"data"),
        Entry {
            path: "pkg/b",
            kind: EntryType::Link,
            link: Some("pkg/a"),
            data: b"",
        },
    ];
    let (_dir, result) = try_unpack(&inside, LIMITS);
    let unpacked = result.expect("a hard link inside the tree is fine");
    assert_eq!(std::fs::read(unpacked.root.join("b")).unwrap(), b"data");
}

#[test]
fn device_files_and_fifos_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let entries = [Entry {
            path: "pkg/dev",
            kind,
            link: None,
            data: b"",
        }];
        assert_unsafe(try_unpack(&entries, LIMITS).1, &format!("{kind:?}"));
    }
}

#[test]
fn archive_bombs_hit_the_limits() {
    let many: Vec<String> = (0..50).map(|i| format!("pkg/f{i}")).collect();
    let entries: Vec<Entry<'_>> = many.iter().map(|p| file(p, b"")).collect();
    let (_dir, result) = try_unpack(
        &entries,
        UnpackLimits {
            max_entries: 10,
            max_total_bytes: 1 << 20,
        },
    );
    assert!(
        matches!(result, Err(UnpackError::TooManyEntries(10))),
        "{result:?}"
    );

    // 4 MiB of zeros compress to a few KiB: the declared sizes are checked before writing.
    let zeros = vec![0u8; 4 << 20];
    let entries = [file("pkg/zeros", &zeros)];
    let (dir, result) = try_unpack(
        &entries,
        UnpackLimits {
            max_entries: 10,
            max_total_bytes: 1 << 20,
        },
    );
    assert!(
        matches!(result, Err(UnpackError::TooLarge(_))),
        "{result:?}"
    );
    assert!(
        std::fs::metadata(dir.path().join("source.archive"))
            .unwrap()
            .len()
            < 64 * 1024
    );
    assert!(!dir.path().join("src/pkg/zeros").exists());
}

#[test]
fn a_plain_tar_and_garbage_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    std::fs::write(&archive, raw_archive(&[file("x/y.txt", b"plain")], false)).unwrap();
    let dest = dir.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let unpacked = unpack(&archive, &dest, LIMITS).expect("plain tar");
    assert_eq!(
        std::fs::read(unpacked.root.join("y.txt")).unwrap(),
        b"plain"
    );

    std::fs::write(&archive, b"\x1f\x8bthis is not gzip").unwrap();
    let dest = dir.path().join("out2");
    std::fs::create_dir(&dest).unwrap();
    let err = unpack(&archive, &dest, LIMITS).unwrap_err();
    assert_eq!(err.kind(), BuildErrorKind::UnsafeArchive, "{err}");
}

/// A gzipped archive of GNU-format entries (type, name, data), so that the tar crate treats
/// `L` (long name), `x` (extended header) and `g` (global header) records as such.
fn gnu_archive(entries: &[(EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (kind, path, data) in entries {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if *kind == EntryType::Symlink {
            header.set_link_name("f").unwrap();
        }
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(*kind);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(data);
        tar.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    tar.extend(std::iter::repeat_n(0u8, 1024));
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn unpack_bytes(bytes: &[u8]) -> Result<buildfleet_builder::unpack::Unpacked, UnpackError> {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("source.archive");
    std::fs::write(&archive, bytes).unwrap();
    let dest = dir.path().join("src");
    std::fs::create_dir(&dest).unwrap();
    unpack(&archive, &dest, LIMITS)
}

#[test]
fn oversized_header_records_are_refused_before_they_are_read() {
    use buildfleet_builder::unpack::MAX_HEADER_BYTES;
    // 32 MiB of one byte compresses to about 32 KiB. The tar crate reads a long name or an
    // extended header into memory whole, and skips a global header's data: none of it
    // counted against the size limit, so a small archive could make the builder allocate
    // or decompress gigabytes.
    let big = vec![b'x'; 32 << 20];
    for (kind, what) in [
        (EntryType::GNULongName, "a long name"),
        (EntryType::XHeader, "an extended header"),
        (EntryType::XGlobalHeader, "a global header"),
        (EntryType::Directory, "data on a directory entry"),
        (EntryType::Symlink, "data on a symlink entry"),
    ] {
        let archive = gnu_archive(&[(kind, "pkg/x", &big), (EntryType::Regular, "pkg/f", b"f")]);
        assert!(archive.len() < 256 * 1024, "{what}: {}", archive.len());
        let result = unpack_bytes(&archive);
        assert!(
            matches!(result, Err(UnpackError::HeaderTooLarge(MAX_HEADER_BYTES))),
            "{what}: {result:?}"
        );
        assert_unsafe(result, what);
    }

    // Real long names and extended headers are far below the bound and still work.
    let name = format!("pkg/{}long.rs", "sub/".repeat(75));
    let archive = gnu_archive(&[
        (
            EntryType::XGlobalHeader,
            "pax_global_header",
            b"22 comment=a global\n",
        ),
        (EntryType::GNULongName, "././@LongLink", name.as_bytes()),
        (EntryType::Regular, "pkg/short", b"long"),
        (EntryType::XHeader, "pkg/PaxHeader", b"17 path=pkg/p.rs\n"),
        (EntryType::Regular, "pkg/q.rs", b"pax"),
    ]);
    let unpacked = unpack_bytes(&archive).expect("an archive with a long name and pax records");
    assert!(unpacked.root.ends_with("pkg"));
}

#[test]
fn the_digest_covers_every_byte_of_the_archive_file() {
    use sha2::{Digest, Sha256};
    let entries = [
        file("pkg/a", b"data"),
        Entry {
            path: "pkg/link",
            kind: EntryType::Symlink,
            link: Some("a"),
            data: b"",
        },
        file("pkg/./deep/er/b", b"more"),
    ];
    for gzip in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("source.archive");
        let mut bytes = raw_archive(&entries, gzip);
        // Trailing bytes past the end-of-archive blocks count too.
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&archive, &bytes).unwrap();
        let dest = dir.path().join("src");
        std::fs::create_dir(&dest).unwrap();
        let unpacked = unpack(&archive, &dest, LIMITS).expect("a good archive");
        let expected = hex::encode(Sha256::digest(&bytes));
        assert_eq!(unpacked.archive_sha256.as_str(), expected, "gzip {gzip}");
        assert_eq!(std::fs::read(dest.join("pkg/deep/er/b")).unwrap(), b"more");
        assert_eq!(std::fs::read(dest.join("pkg/link")).unwrap(), b"data");
        nothing_outside(dir.path());
    }
}

#[test]
fn an_entry_under_a_symlink_made_earlier_is_refused() {
    // `pkg/dir` becomes a symlink to a real directory inside the tree; a later entry
    // through it would land where the unpacker did not check.
    let entries = [
        file("pkg/real/keep", b"x"),
        Entry {
            path: "pkg/dir",
            kind: EntryType::Symlink,
            link: Some("real"),
            data: b"",
        },
        file("pkg/./dir/sneaky", b"y"),
    ];
    let (dir, result) = try_unpack(&entries, LIMITS);
    assert_unsafe(result, "an entry through a symlink");
    assert!(!dir.path().join("src/pkg/real/sneaky").exists());
    let replace = [
        Entry {
            path: "pkg/dir",
            kind: EntryType::Symlink,
            link: Some("real"),
            data: b"",
        },
        file("pkg/dir", b"over the link"),
    ];
    assert_unsafe(
        try_unpack(&replace, LIMITS).1,
        "an entry replacing a symlink",
    );
}
