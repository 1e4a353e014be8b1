//! Fuzz target: build statement text and SSHSIG verification, and the backend's completion
//! checks. An input is `statement text NUL signature text`.
//! Corpus: `tests/__fuzz__/statement/corpus/` (statements signed with ssh-keygen).

#[test]
fn statement() {
    bolero::check!().for_each(buildfleet_fuzz::statement::check);
}
