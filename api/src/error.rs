//! The one error shape of every 4xx and 5xx answer: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`bad_request`, `not_found`, `conflict`, ...).
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
}
