//! Aggregates for the dashboard's overview.

use diesel::prelude::*;

use super::error::StoreError;
use super::schema::jobs;
use super::Store;

impl Store {
    /// Jobs that reached a terminal state at or after `since` (unix ms).
    pub fn count_finished_since(&self, since: i64) -> Result<i64, StoreError> {
        Ok(jobs::table
            .filter(jobs::finished_at.ge(since))
            .count()
            .get_result(&mut *self.conn()?)?)
    }
}
