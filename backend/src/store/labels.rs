//! Labels and parameters: string maps at the API, JSON text in the database.

use std::collections::BTreeMap;

use super::error::StoreError;

/// Builder labels, a job's required labels, a job's parameters.
pub type Labels = BTreeMap<String, String>;

pub(crate) fn encode(map: &Labels) -> Result<String, StoreError> {
    serde_json::to_string(map).map_err(|e| StoreError::Corrupt(format!("encoding labels: {e}")))
}

pub(crate) fn decode(column: &str, text: &str) -> Result<Labels, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// A job may run on a builder that offers every label the job requires, with the same value.
pub fn satisfies(offered: &Labels, required: &Labels) -> bool {
    required.iter().all(|(k, v)| offered.get(k) == Some(v))
}
