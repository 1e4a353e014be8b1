//! Fuzz target: the frame decoder (`ClientMessage::decode`, `ServerMessage::decode`).
//! Corpus: `tests/__fuzz__/frame_decoder/corpus/` (the frames of docs/protocol.md).

#[test]
fn frame_decoder() {
    bolero::check!().for_each(buildfleet_fuzz::frames::check);
}
