//! Uploaded sources.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/sources`: where builders will fetch the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedSource {
    pub sha256: String,
    pub size: u64,
    pub url: String,
}
