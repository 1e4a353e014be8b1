//! Fuzz target: the source-archive unpacker on archives built from generated entries
//! (traversal, absolute paths, links, devices, lying sizes), which raw bytes rarely reach.

use buildfleet_fuzz::archive::{check_generated, GenArchive};

#[test]
fn archive_entries() {
    bolero::check!()
        .with_type::<GenArchive>()
        .for_each(check_generated);
}
