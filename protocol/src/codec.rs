//! Encoding and decoding of frames, with size limits and typed errors.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::messages::{
    ClientMessage, ErrorCode, JobEvent, JobEventKind, LogStream, ServerMessage, Stage,
};
use crate::types::{Attempt, JobId};

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this code still accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Default cap on one text frame; large enough for a `jobs` batch or a long log line.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the session allows; it was not parsed.
    TooLarge { len: usize, max: usize },
    /// Not JSON, or JSON that ends too early.
    Syntax(String),
    /// JSON that is not a known message: unknown `type`, missing or mistyped field.
    Invalid(String),
}

impl DecodeError {
    /// The error code the backend sends for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Syntax(_) | DecodeError::Invalid(_) => ErrorCode::MalformedFrame,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::Syntax(e) => write!(f, "frame is not valid JSON: {e}"),
            DecodeError::Invalid(e) => write!(f, "frame is not a valid message: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one frame of type `T`, refusing frames over `max_bytes` before parsing them.
pub fn decode<T: DeserializeOwned>(text: &str, max_bytes: usize) -> Result<T, DecodeError> {
    if text.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: max_bytes,
        });
    }
    let message = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::Invalid(e.to_string()),
        _ => DecodeError::Syntax(e.to_string()),
    })?;
    // serde also reads an internally tagged enum from a JSON array whose first element is
    // the tag (`["job_request", 1]`); the protocol's frames are objects only.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(DecodeError::Invalid("a frame must be a JSON object".into()));
    }
    Ok(message)
}

#[allow(
    clippy::expect_used,
    reason = "only strings, numbers, sequences and string-keyed maps: serialising cannot fail"
)]
fn encode<T: Serialize>(message: &T) -> String {
    // The message types contain only strings, numbers, sequences and string-keyed maps,
    // which serde_json always serialises.
    serde_json::to_string(message).expect("protocol messages always serialise")
}

impl ClientMessage {
    /// Decodes one builder frame, refusing frames over `max_bytes` before parsing them.
    ///
    /// `job_event` frames, by far the most frequent, take a fast path that reads them in one
    /// pass without serde's buffering of internally tagged enums. Anything that path does not
    /// accept goes through the generic [`decode`], so results and errors are the same as
    /// `decode::<ClientMessage>` for every input.
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        if text.len() <= max_bytes {
            if let Some(event) = decode_job_event_fast(text) {
                return Ok(ClientMessage::JobEvent(event));
            }
        }
        decode(text, max_bytes)
    }

    pub fn to_json(&self) -> String {
        encode(self)
    }
}

impl ServerMessage {
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        decode(text, max_bytes)
    }

    pub fn to_json(&self) -> String {
        encode(self)
    }
}

// ---- the `job_event` fast path ----
//
// `ClientMessage` (`tag = "type"`) and `JobEventKind` (`tag = "kind"`) are internally tagged,
// so serde first reads a frame into an owned `Content` tree and then deserialises the variant
// from that tree: two passes and an allocation per value. The visitors below read a
// `job_event` frame straight from the JSON into a `JobEvent`.
//
// Invariant: whenever this path returns `Some(event)`, the generic path returns
// `Ok(ClientMessage::JobEvent(event))` for the same text. The path therefore accepts only a
// plain subset — a JSON object whose `type` is the string `job_event`, every field present
// once, leaf values read by the same `Deserialize` impls — and gives up (returns `None`) on
// anything else: another type, a duplicate or missing key, a value of the wrong type, a
// non-string tag, trailing characters. It never reports an error itself; the generic path
// decides what is wrong and how to say it. Unknown keys are skipped, as the generic path does.

/// Decodes `text` as a `job_event` frame, or `None` when the generic path must decide.
fn decode_job_event_fast(text: &str) -> Option<JobEvent> {
    let mut de = serde_json::Deserializer::from_str(text);
    let event = (&mut de).deserialize_map(FrameVisitor).ok()?;
    de.end().ok()?;
    Some(event)
}

/// Why the fast path gave up; never shown (the generic path produces the reported error).
fn give_up<E: de::Error>() -> E {
    E::custom("not handled by the job_event fast path")
}

/// Skips an unknown field's value, checking it exactly as strictly as serde's buffering
/// does: numbers are parsed (so `1e400` fails, as it does there), strings unescaped, and
/// nesting counts against serde_json's depth limit. `IgnoredAny` would only scan the value.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// Sets a field once; a second occurrence makes the fast path give up.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(give_up());
    }
    *slot = Some(value);
    Ok(())
}

/// The keys of a `job_event` frame; `Other` is skipped.
enum FrameKey {
    Type,
    JobId,
    Attempt,
    Seq,
    TimestampMs,
    Event,
    Other,
}

/// The keys of a `job_event`'s `event` object; `Other` is skipped.
enum EventKey {
    Kind,
    Stream,
    Line,
    Stage,
    Other,
}

/// Reads a map key as a string (owned or borrowed, escapes resolved, as serde_json gives it).
struct KeyVisitor<K>(fn(&str) -> K);

impl<'de, K> Visitor<'de> for KeyVisitor<K> {
    type Value = K;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

impl<'de> Deserialize<'de> for FrameKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor(|key| match key {
            "type" => FrameKey::Type,
            "job_id" => FrameKey::JobId,
            "attempt" => FrameKey::Attempt,
            "seq" => FrameKey::Seq,
            "timestamp_ms" => FrameKey::TimestampMs,
            "event" => FrameKey::Event,
            _ => FrameKey::Other,
        }))
    }
}

impl<'de> Deserialize<'de> for EventKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor(|key| match key {
            "kind" => EventKey::Kind,
            "stream" => EventKey::Stream,
            "line" => EventKey::Line,
            "stage" => EventKey::Stage,
            _ => EventKey::Other,
        }))
    }
}

/// A tag value: the fast path goes on only for a JSON string equal to one of `names`, and
/// answers its index. Checking the tag as soon as it is read lets other frame types give up
/// early (encoders write `type` first).
struct Tag(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Tag {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Tag {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tag string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|name| *name == v)
            .ok_or_else(give_up)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = JobEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job_event frame")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JobEvent, A::Error> {
        let mut tagged = None;
        let mut job_id: Option<JobId> = None;
        let mut attempt: Option<Attempt> = None;
        let mut seq: Option<u64> = None;
        let mut timestamp_ms: Option<i64> = None;
        let mut event: Option<JobEventKind> = None;
        while let Some(key) = map.next_key::<FrameKey>()? {
            match key {
                FrameKey::Type => set_once(&mut tagged, map.next_value_seed(Tag(&["job_event"]))?)?,
                FrameKey::JobId => set_once(&mut job_id, map.next_value()?)?,
                FrameKey::Attempt => set_once(&mut attempt, map.next_value()?)?,
                FrameKey::Seq => set_once(&mut seq, map.next_value()?)?,
                FrameKey::TimestampMs => set_once(&mut timestamp_ms, map.next_value()?)?,
                FrameKey::Event => set_once(&mut event, map.next_value::<FastEventKind>()?.0)?,
                FrameKey::Other => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        match (tagged, job_id, attempt, seq, timestamp_ms, event) {
            (Some(_), Some(job_id), Some(attempt), Some(seq), Some(timestamp_ms), Some(event)) => {
                Ok(JobEvent {
                    job_id,
                    attempt,
                    seq,
                    timestamp_ms,
                    event,
                })
            }
            _ => Err(give_up()),
        }
    }
}

/// A `JobEventKind` read from a JSON object without buffering.
struct FastEventKind(JobEventKind);

impl<'de> Deserialize<'de> for FastEventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventKindVisitor)
    }
}

struct EventKindVisitor;

impl<'de> Visitor<'de> for EventKindVisitor {
    type Value = FastEventKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastEventKind, A::Error> {
        const LOG: usize = 0;
        const STAGE: usize = 1;
        let mut kind = None;
        let mut stream: Option<LogStream> = None;
        let mut line: Option<String> = None;
        let mut stage: Option<Stage> = None;
        // `stage` on a log event (or `stream`/`line` on a stage event) is an unknown field
        // to the generic path, which skips it whatever its value. Here it is read as typed,
        // and a value that does not fit makes the fast path give up: same result either way.
        while let Some(key) = map.next_key::<EventKey>()? {
            match key {
                EventKey::Kind => {
                    set_once(&mut kind, map.next_value_seed(Tag(&["log", "stage"]))?)?
                }
                EventKey::Stream => set_once(&mut stream, map.next_value()?)?,
                EventKey::Line => set_once(&mut line, map.next_value()?)?,
                EventKey::Stage => set_once(&mut stage, map.next_value()?)?,
                EventKey::Other => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        match (kind, stream, line, stage) {
            (Some(LOG), Some(stream), Some(line), _) => {
                Ok(FastEventKind(JobEventKind::Log { stream, line }))
            }
            (Some(STAGE), _, _, Some(stage)) => Ok(FastEventKind(JobEventKind::Stage { stage })),
            _ => Err(give_up()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::messages::{Heartbeat, JobRef};

    fn generic(text: &str, max: usize) -> Result<ClientMessage, DecodeError> {
        decode::<ClientMessage>(text, max)
    }

    /// The fast path's contract, checked on one input: `ClientMessage::decode` answers exactly
    /// what the generic path answers, and whenever the fast path itself accepts the text, the
    /// generic path accepts it as the same event.
    fn check(text: &str, max: usize) -> Result<bool, TestCaseError> {
        let expected = generic(text, max);
        prop_assert_eq!(&ClientMessage::decode(text, max), &expected, "{}", text);
        // The fast path itself knows no limit; the size check precedes it.
        let fast = decode_job_event_fast(text);
        if let Some(event) = &fast {
            prop_assert_eq!(
                &generic(text, usize::MAX),
                &Ok(ClientMessage::JobEvent(event.clone())),
                "{}",
                text
            );
        }
        Ok(fast.is_some())
    }

    fn event(seq: u64, kind: JobEventKind) -> JobEvent {
        JobEvent {
            job_id: JobId(42),
            attempt: Attempt(1),
            seq,
            timestamp_ms: 1_700_000_000_000,
            event: kind,
        }
    }

    #[test]
    fn encoded_job_events_take_the_fast_path() {
        let events = [
            event(
                1,
                JobEventKind::Log {
                    stream: LogStream::Stdout,
                    line: "hello \"world\" \u{e9} \t\u{1f600}".into(),
                },
            ),
            event(
                u64::MAX,
                JobEventKind::Log {
                    stream: LogStream::Stderr,
                    line: String::new(),
                },
            ),
            event(
                7,
                JobEventKind::Stage {
                    stage: Stage::FetchingSource,
                },
            ),
        ];
        for event in events {
            let text = ClientMessage::JobEvent(event.clone()).to_json();
            assert_eq!(decode_job_event_fast(&text), Some(event.clone()), "{text}");
            assert_eq!(
                ClientMessage::decode(&text, DEFAULT_MAX_FRAME_BYTES),
                Ok(ClientMessage::JobEvent(event))
            );
        }
    }

    #[test]
    fn other_frames_are_left_to_the_generic_path() {
        let heartbeat = ClientMessage::Heartbeat(Heartbeat {
            active_jobs: vec![JobRef {
                job_id: JobId(1),
                attempt: Attempt(1),
            }],
        })
        .to_json();
        assert_eq!(decode_job_event_fast(&heartbeat), None);
        assert!(matches!(
            ClientMessage::decode(&heartbeat, DEFAULT_MAX_FRAME_BYTES),
            Ok(ClientMessage::Heartbeat(_))
        ));
    }

    #[test]
    fn fixed_inputs_decode_as_the_generic_path_does() {
        let log = r#"{"kind":"log","stream":"stdout","line":"x"}"#;
        let head = r#""type":"job_event","job_id":1,"attempt":1,"seq":1,"timestamp_ms":1"#;
        let cases: Vec<(String, bool)> = vec![
            // (frame, whether the fast path is expected to take it)
            (format!("{{{head},\"event\":{log}}}"), true),
            (format!(" \n{{ {head} , \"event\" : {log} }}\t"), true),
            (format!("{{\"event\":{log},{head}}}"), true),
            (
                format!("{{{head},\"event\":{log},\"extra\":[1,{{}}]}}"),
                true,
            ),
            (
                format!(
                    "{{{head},\"event\":{{\"line\":\"x\",\"kind\":\"log\",\"stream\":\"stderr\",\"more\":null}}}}"
                ),
                true,
            ),
            (
                format!("{{{head},\"event\":{{\"kind\":\"stage\",\"stage\":\"running\"}}}}"),
                true,
            ),
            (
                format!(
                    "{{{head},\"event\":{{\"kind\":\"stage\",\"stage\":\"running\",\"line\":7}}}}"
                ),
                false,
            ),
            (
                format!(
                    "{{{head},\"event\":{{\"kind\":\"log\",\"stream\":\"stdout\",\"line\":\"x\",\"stage\":\"nope\"}}}}"
                ),
                false,
            ),
            (
                format!(
                    "{{{head},\"event\":{{\"kind\":\"log\",\"stream\":{{\"stdout\":{{}}}},\"line\":\"x\"}}}}"
                ),
                false,
            ),
            (
                format!("{{{head},\"event\":{{\"kind\":0,\"stream\":\"stdout\",\"line\":\"x\"}}}}"),
                false,
            ),
            (
                format!(
                    "{{\"typ\\u0065\":\"job_\\u0065vent\",\"job_id\":1,\"attempt\":1,\"seq\":1,\"timestamp_ms\":1,\"event\":{log}}}"
                ),
                true,
            ),
            (
                format!("{{{head},\"type\":\"job_event\",\"event\":{log}}}"),
                false,
            ),
            (format!("{{{head},\"seq\":2,\"event\":{log}}}"), false),
            (format!("{{{head}}}"), false),
            (format!("{{{head},\"event\":{log}}}x"), false),
            (format!("{{{head},\"event\":{log}"), false),
            (
                format!("{{{head},\"event\":[\"log\",\"stdout\",\"x\"]}}"),
                false,
            ),
            (
                r#"["job_event",1,1,1,1,{"kind":"log","stream":"stdout","line":"x"}]"#.into(),
                false,
            ),
            (
                format!("{{\"type\":\"heartbeat\",\"active_jobs\":[],\"event\":{log}}}"),
                false,
            ),
            (
                format!(
                    "{{\"type\":\"job_event\",\"job_id\":\"1\",\"attempt\":1,\"seq\":1,\"timestamp_ms\":1,\"event\":{log}}}"
                ),
                false,
            ),
            (
                format!(
                    "{{\"type\":\"job_event\",\"job_id\":1,\"attempt\":2147483648,\"seq\":1,\"timestamp_ms\":1,\"event\":{log}}}"
                ),
                false,
            ),
            (
                format!(
                    "{{\"type\":\"job_event\",\"job_id\":1,\"attempt\":1,\"seq\":-1,\"timestamp_ms\":1,\"event\":{log}}}"
                ),
                false,
            ),
            (
                format!(
                    "{{\"type\":\"job_event\",\"job_id\":1,\"attempt\":1,\"seq\":1,\"timestamp_ms\":1.5,\"event\":{log}}}"
                ),
                false,
            ),
            ("".into(), false),
            ("null".into(), false),
            ("{}".into(), false),
        ];
        for (text, fast) in cases {
            let taken = check(&text, DEFAULT_MAX_FRAME_BYTES).unwrap();
            assert_eq!(taken, fast, "{text}");
        }
        // The size limit comes first, on every path.
        let text = format!("{{{head},\"event\":{log}}}");
        assert_eq!(
            ClientMessage::decode(&text, 10),
            Err(DecodeError::TooLarge {
                len: text.len(),
                max: 10
            })
        );
    }

    /// Frame values to combine: valid ones first, then near misses.
    const TYPES: &[&str] = &[
        r#""job_event""#,
        r#""job_\u0065vent""#,
        r#""heartbeat""#,
        r#""job_event ""#,
        "1",
        "null",
        r#"["job_event"]"#,
        r#"{"job_event":null}"#,
    ];
    const JOB_IDS: &[&str] = &[
        "42",
        "-7",
        "9223372036854775807",
        "-0",
        "9223372036854775808",
        "1.5",
        "1e3",
        r#""42""#,
        "null",
    ];
    const ATTEMPTS: &[&str] = &["1", "2147483647", "2147483648", "-1", "1.0", r#""1""#];
    const SEQS: &[&str] = &[
        "1",
        "18446744073709551615",
        "0",
        "18446744073709551616",
        "-1",
        r#""1""#,
        "null",
    ];
    const TIMESTAMPS: &[&str] = &[
        "1700000000000",
        "-5",
        "9223372036854775807",
        "9223372036854775808",
        "1.0",
        "true",
    ];
    const KINDS: &[&str] = &[
        r#""log""#,
        r#""stage""#,
        r#""lo\u0067""#,
        r#""Log""#,
        "0",
        "1",
        "null",
    ];
    const STREAMS: &[&str] = &[
        r#""stdout""#,
        r#""stderr""#,
        r#"{"stdout":null}"#,
        r#"{"stderr":{}}"#,
        r#""STDOUT""#,
        "1",
        "null",
    ];
    const LINES: &[&str] = &[
        r#""hello""#,
        r#""""#,
        r#""tab\there \u00e9 \ud83d\ude00 \"q\"""#,
        r#""\ud800""#,
        "1",
        "null",
        r#"["a"]"#,
    ];
    const STAGES: &[&str] = &[
        r#""running""#,
        r#""fetching_source""#,
        r#"{"running":null}"#,
        r#""Running""#,
        "null",
        "3",
    ];
    const EXTRA_KEYS: &[&str] = &[
        "extra",
        "Type",
        r"typ\u0065",
        r"job\u005fid",
        "",
        "kind",
        "line",
    ];
    const EXTRA_VALUES: &[&str] = &[
        "null",
        "{}",
        "[1,2]",
        r#""x""#,
        r#"{"a":[{}]}"#,
        "1e400",
        "-",
    ];

    /// Edits applied to an object's entries.
    #[derive(Debug, Clone)]
    enum Edit {
        Drop(usize),
        Duplicate(usize, usize),
        Add(usize, usize),
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        let some = vec(
            prop_oneof![
                any::<usize>().prop_map(Edit::Drop),
                (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
                (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Add(a, b)),
            ],
            1..3,
        );
        prop_oneof![2 => Just(Vec::new()), 1 => some]
    }

    /// Picks a value, valid most of the time.
    fn pick(values: &'static [&'static str], valid: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            9 => (0..valid).prop_map(move |i| values[i].to_owned()),
            1 => (0..values.len()).prop_map(move |i| values[i].to_owned()),
        ]
    }

    /// Writes an object from entries in the given order, with edits and optional spaces.
    fn object(mut entries: Vec<(String, String)>, edits: &[Edit], spaced: bool) -> String {
        for edit in edits {
            match *edit {
                Edit::Drop(i) if !entries.is_empty() => {
                    entries.remove(i % entries.len());
                }
                Edit::Duplicate(i, v) if !entries.is_empty() => {
                    let key = entries[i % entries.len()].0.clone();
                    let at = v % (entries.len() + 1);
                    entries.insert(at, (key, EXTRA_VALUES[v % EXTRA_VALUES.len()].into()));
                }
                Edit::Add(k, v) => {
                    let at = v % (entries.len() + 1);
                    let entry = (
                        EXTRA_KEYS[k % EXTRA_KEYS.len()].into(),
                        EXTRA_VALUES[v % EXTRA_VALUES.len()].into(),
                    );
                    entries.insert(at, entry);
                }
                _ => {}
            }
        }
        let sep = if spaced { " , " } else { "," };
        let colon = if spaced { " :\n" } else { ":" };
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
            .collect();
        format!("{{{}}}", body.join(sep))
    }

    fn event_value() -> impl Strategy<Value = String> {
        let entries = (
            pick(KINDS, 2),
            pick(STREAMS, 3),
            pick(LINES, 3),
            pick(STAGES, 3),
            any::<u8>(),
        )
            .prop_map(|(kind, stream, line, stage, shape)| {
                let kind_is_log = kind.contains("log");
                let mut entries = vec![("kind".to_owned(), kind)];
                // Mostly the fields of the kind, sometimes those of the other kind as well.
                if kind_is_log || shape % 5 == 0 {
                    entries.push(("stream".into(), stream));
                    entries.push(("line".into(), line));
                }
                if !kind_is_log || shape % 5 == 1 {
                    entries.push(("stage".into(), stage));
                }
                entries
            })
            .prop_shuffle();
        prop_oneof![
            12 => (entries, edits(), any::<bool>())
                .prop_map(|(entries, edits, spaced)| object(entries, &edits, spaced)),
            1 => prop::sample::select(vec!["null", "[]", r#"["log","stdout","x"]"#, r#""log""#])
                .prop_map(str::to_owned),
        ]
    }

    fn frame() -> impl Strategy<Value = String> {
        let entries = (
            pick(TYPES, 2),
            pick(JOB_IDS, 4),
            pick(ATTEMPTS, 2),
            pick(SEQS, 3),
            pick(TIMESTAMPS, 3),
            event_value(),
        )
            .prop_map(|(ty, job_id, attempt, seq, timestamp_ms, event)| {
                vec![
                    ("type".to_owned(), ty),
                    ("job_id".into(), job_id),
                    ("attempt".into(), attempt),
                    ("seq".into(), seq),
                    ("timestamp_ms".into(), timestamp_ms),
                    ("event".into(), event),
                ]
            })
            .prop_shuffle();
        let tails = prop_oneof![
            6 => prop::sample::select(vec!["", " ", "\n"]),
            1 => prop::sample::select(vec!["x", "}", ",", " {}"]),
        ];
        (entries, edits(), any::<bool>(), tails, any::<u8>()).prop_map(
            |(entries, edits, spaced, tail, cut)| {
                let mut text = object(entries, &edits, spaced) + tail;
                // Sometimes cut the frame short (at a character boundary).
                if cut % 8 == 0 {
                    let mut at = usize::from(cut) % (text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    text.truncate(at);
                }
                text
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn fast_path_matches_the_generic_path_on_mutated_frames(text in frame(), small in any::<bool>()) {
            // Now and then a limit just below the frame's size.
            let max = if small { text.len().saturating_sub(1) } else { DEFAULT_MAX_FRAME_BYTES };
            check(&text, max)?;
        }

        #[test]
        fn fast_path_matches_the_generic_path_on_encoded_events(
            job_id in any::<i64>(),
            attempt in any::<i32>(),
            seq in any::<u64>(),
            timestamp_ms in any::<i64>(),
            line in vec(any::<char>(), 0..40).prop_map(String::from_iter),
            stderr in any::<bool>(),
            stage in prop::sample::select(vec![
                None,
                Some(Stage::FetchingSource),
                Some(Stage::Unpacking),
                Some(Stage::Running),
                Some(Stage::Uploading),
                Some(Stage::Finishing),
            ]),
        ) {
            let kind = match stage {
                Some(stage) => JobEventKind::Stage { stage },
                None => JobEventKind::Log {
                    stream: if stderr { LogStream::Stderr } else { LogStream::Stdout },
                    line,
                },
            };
            let event = JobEvent { job_id: JobId(job_id), attempt: Attempt(attempt), seq, timestamp_ms, event: kind };
            let text = ClientMessage::JobEvent(event.clone()).to_json();
            prop_assert!(check(&text, DEFAULT_MAX_FRAME_BYTES)?, "the fast path must take {}", text);
            prop_assert_eq!(decode_job_event_fast(&text), Some(event));
        }

        #[test]
        fn fast_path_matches_the_generic_path_on_any_text(text in vec(any::<char>(), 0..64).prop_map(String::from_iter)) {
            check(&text, DEFAULT_MAX_FRAME_BYTES)?;
        }
    }
}
