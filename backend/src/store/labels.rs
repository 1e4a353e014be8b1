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

/// The value an operator sets to let the builder choose the label's value itself.
pub const ANY_VALUE: &str = "*";

/// The labels a builder is matched by. The operator's labels (set at admission or by the
/// enrolment token) are authoritative: each counts as set, except that a label the operator
/// set to [`ANY_VALUE`] takes the value the builder declares (and is absent if it declares
/// none). Anything else a builder declares is shown but never matched, so no builder can
/// claim a label, such as a trusted pool, that its operator did not give it.
pub fn effective(operator: &Labels, declared: &Labels) -> Labels {
    operator
        .iter()
        .filter_map(|(key, value)| {
            if value == ANY_VALUE {
                declared
                    .get(key)
                    .map(|chosen| (key.clone(), chosen.clone()))
            } else {
                Some((key.clone(), value.clone()))
            }
        })
        .collect()
}

/// Declared labels that do not count for matching (see [`effective`]).
pub fn ignored(operator: &Labels, declared: &Labels) -> Labels {
    declared
        .iter()
        .filter(|(key, value)| match operator.get(*key) {
            Some(set) => set != ANY_VALUE && set != *value,
            None => true,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn operator_labels_are_authoritative() {
        let operator = labels(&[("pool", "ci"), ("arch", "*"), ("gpu", "*")]);
        let declared = labels(&[("pool", "trusted"), ("arch", "aarch64"), ("os", "linux")]);
        assert_eq!(
            effective(&operator, &declared),
            labels(&[("pool", "ci"), ("arch", "aarch64")])
        );
        assert_eq!(
            ignored(&operator, &declared),
            labels(&[("pool", "trusted"), ("os", "linux")])
        );
        assert_eq!(effective(&Labels::new(), &declared), Labels::new());
        assert_eq!(
            effective(&operator, &Labels::new()),
            labels(&[("pool", "ci")])
        );
    }
}
