//! The HTTP error policy: every failing request gets one JSON shape,
//! `{"error": {"code": "<stable_code>", "message": "<human text>"}}`, and a status chosen here
//! and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use buildfleet_api::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token came with a request that needs one.
    #[error("a bearer token is required")]
    Unauthorized,
    /// A bearer token came, but this backend does not accept it. Same code and status as
    /// [`ApiError::Unauthorized`], another message: the caller has to fix its token, not
    /// add one.
    #[error("{0}")]
    TokenRefused(String),
    #[error("the token does not allow this")]
    Forbidden,
    /// A valid token whose scope does not cover the action; the message says what it needs.
    #[error("{0}")]
    ScopeTooNarrow(String),
    /// `<thing> not found`: give the thing (`job 42`), the message adds the rest.
    #[error("{0} not found")]
    NotFound(String),
    /// Something missing, said in a whole sentence of its own (why it is not there, what
    /// there is instead): same code and status as [`ApiError::NotFound`], shown as given.
    #[error("{0}")]
    NotFoundExplained(String),
    #[error("{0}")]
    Conflict(String),
    #[error("body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    DigestMismatch(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// The stable machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::TokenRefused(_) => "unauthorized",
            ApiError::Forbidden | ApiError::ScopeTooNarrow(_) => "forbidden",
            ApiError::NotFound(_) | ApiError::NotFoundExplained(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::DigestMismatch(_) => "digest_mismatch",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::TokenRefused(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ScopeTooNarrow(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NotFoundExplained(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::DigestMismatch(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "internal error serving a request");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized | ApiError::TokenRefused(_)) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            // The database or a service restarting: a client may try again shortly.
            response.insert_header(("Retry-After", "1"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // `NotFound` adds "not found" itself; the store's message already says it.
            StoreError::NotFound { entity, key } => ApiError::NotFound(format!("{entity} {key}")),
            StoreError::AlreadyExists { .. }
            | StoreError::IllegalTransition { .. }
            | StoreError::StaleAttempt { .. }
            | StoreError::Conflict { .. }
            | StoreError::BuilderBusy { .. }
            | StoreError::LogOverlap { .. } => ApiError::Conflict(e.to_string()),
            StoreError::InvalidJobToken(_) => ApiError::TokenRefused(e.to_string()),
            StoreError::BuilderDisabled(_) => ApiError::Forbidden,
            StoreError::InvalidInput(_) => ApiError::BadRequest(e.to_string()),
            _ if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Internal(e.into()),
        }
    }
}

/// Runs a blocking store call within the store's admission limit
/// ([`crate::offload::store`]) and flattens the two error layers.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    crate::offload::store(f).await.map_err(ApiError::internal)?
}

/// Parses a JSON request body after authentication, so an unauthenticated caller learns
/// nothing about the body's shape.
///
/// A body that is not JSON is refused with where it breaks; a body of the wrong shape with
/// the field at fault (`source_sha256`, `[3].recipe`) instead of a line and column.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(describe_json_error(body, &e)))
}

fn describe_json_error(body: &[u8], e: &serde_json::Error) -> String {
    let position = format!(" at line {} column {}", e.line(), e.column());
    let full = e.to_string();
    let what = full.strip_suffix(&position).unwrap_or(&full);
    match e.classify() {
        serde_json::error::Category::Data => match field_at(body, e.line(), e.column()) {
            Some(field) => format!("invalid request body: {field}: {what}"),
            None => format!("invalid request body: {what}"),
        },
        serde_json::error::Category::Eof => {
            format!("the request body is not valid JSON: it ends early ({what})")
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => format!(
            "the request body is not valid JSON: {what} at line {}, column {}",
            e.line(),
            e.column()
        ),
    }
}

/// One level of the JSON document around a position.
enum Level {
    /// An object; `key` once the value of a member has begun (after its colon).
    Object {
        key: Option<String>,
        in_value: bool,
    },
    Array {
        index: usize,
    },
}

/// The path (`source_sha256`, `[3].labels.os`) of the value being read at `line`/`column`
/// of `body` (serde_json's 1-based position of an error): the document is scanned up to
/// there. `None` at the top level, or when the position is not inside the body.
fn field_at(body: &[u8], line: usize, column: usize) -> Option<String> {
    let line_start = if line <= 1 {
        0
    } else {
        body.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map(|(i, _)| i + 1)?
    };
    // The column is that of the last byte serde_json read: the end of the value at fault,
    // or the `}` of an object that lacks a field.
    let end = (line_start + column).min(body.len());
    let mut levels: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < end {
        match body[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Level::Object {
                    key,
                    in_value: false,
                }) = levels.last_mut()
                {
                    let literal = body.get(start..=i).unwrap_or_default();
                    *key = serde_json::from_slice::<String>(literal).ok();
                }
            }
            b':' => {
                if let Some(Level::Object { in_value, .. }) = levels.last_mut() {
                    *in_value = true;
                }
            }
            b',' => match levels.last_mut() {
                Some(Level::Object { key, in_value }) => {
                    *key = None;
                    *in_value = false;
                }
                Some(Level::Array { index }) => *index += 1,
                None => {}
            },
            b'{' => levels.push(Level::Object {
                key: None,
                in_value: false,
            }),
            b'[' => levels.push(Level::Array { index: 0 }),
            b'}' | b']' => {
                levels.pop();
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object {
                key: Some(key),
                in_value: true,
            } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Level::Object { .. } => break,
            Level::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only the errors of parsing it are looked at")]
    struct Body {
        source_sha256: String,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        priority: i32,
    }

    fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        match parse_json::<T>(body.as_bytes()) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        assert_eq!(
            refusal::<Body>(r#"{"priority": 1, "source_sha256": 12, "labels": {}}"#),
            "invalid request body: source_sha256: invalid type: integer `12`, expected a string"
        );
        assert_eq!(
            refusal::<Body>("{\"source_sha256\": \"ab\",\n \"labels\": {\"os\": false}}"),
            "invalid request body: labels.os: invalid type: boolean `false`, expected a string"
        );
        assert_eq!(
            refusal::<Vec<Body>>(r#"[{"source_sha256": "a\"b"}, {"source_sha256": null}]"#),
            "invalid request body: [1].source_sha256: invalid type: null, expected a string"
        );
    }

    #[test]
    fn missing_and_unknown_fields_say_which() {
        assert_eq!(
            refusal::<Body>(r#"{"labels": {}}"#),
            "invalid request body: missing field `source_sha256`"
        );
        assert!(refusal::<Body>(r#"{"source_sha256": "ab", "colour": 1}"#)
            .starts_with("invalid request body: unknown field `colour`, expected one of"));
    }

    #[test]
    fn a_body_that_is_not_json_says_where() {
        assert_eq!(
            refusal::<Body>("not json"),
            "the request body is not valid JSON: expected ident at line 1, column 2"
        );
        assert!(refusal::<Body>(r#"{"source_sha256": "#)
            .starts_with("the request body is not valid JSON: it ends early"));
    }

    #[test]
    fn a_store_not_found_says_it_once() {
        let error = ApiError::from(StoreError::NotFound {
            entity: "job",
            key: "999".into(),
        });
        assert_eq!(error.to_string(), "job 999 not found");
    }

    #[test]
    fn an_explained_absence_is_a_sentence_with_the_not_found_code() {
        let error = ApiError::NotFoundExplained("job 7 has no plan yet: it is queued".into());
        assert_eq!(error.to_string(), "job 7 has no plan yet: it is queued");
        assert_eq!(error.code(), "not_found");
        assert_eq!(error.status_code(), StatusCode::NOT_FOUND);
    }
}
