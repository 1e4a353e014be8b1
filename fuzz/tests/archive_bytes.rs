//! Fuzz target: the source-archive unpacker on raw bytes (`.tar.gz`, `.tar` or anything).
//! Corpus: `tests/__fuzz__/archive_bytes/corpus/` (real and hostile archives).

#[test]
fn archive_bytes() {
    bolero::check!().for_each(buildfleet_fuzz::archive::check);
}
