//! Log chunk index: where each run of log lines of an attempt is stored. The lines live in
//! the log store (shared segment files, many attempts to a file); the database holds only one
//! row per chunk, and that row alone says which bytes of a file belong to the attempt.

use diesel::prelude::*;
use serde::Serialize;

use super::attempts::live_attempt;
use super::connection::Db;
use super::error::StoreError;
use super::ids::{Attempt, JobId};
use super::schema::log_chunks;
use super::Store;

/// A stored run of log lines `first_seq..=last_seq` of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogChunk {
    pub job: JobId,
    pub attempt: Attempt,
    pub first_seq: i64,
    pub last_seq: i64,
    /// Storage key of the file holding the chunk: a shared log segment, or for logs stored
    /// before segments, the attempt's own file. The chunk is `length` bytes from `byte_offset`.
    pub location: String,
    pub byte_offset: i64,
    pub length: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewLogChunk {
    pub job: JobId,
    pub attempt: Attempt,
    pub first_seq: i64,
    pub last_seq: i64,
    pub location: String,
    pub byte_offset: i64,
    pub length: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = log_chunks)]
struct LogChunkRow {
    job_id: i64,
    attempt: i32,
    first_seq: i64,
    last_seq: i64,
    location: String,
    byte_offset: i64,
    length: i64,
    created_at: i64,
}

impl From<LogChunkRow> for LogChunk {
    fn from(row: LogChunkRow) -> Self {
        LogChunk {
            job: JobId(row.job_id),
            attempt: Attempt(row.attempt),
            first_seq: row.first_seq,
            last_seq: row.last_seq,
            location: row.location,
            byte_offset: row.byte_offset,
            length: row.length,
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Records a chunk of the live attempt (fenced). Sequence numbers only grow: a chunk
    /// that overlaps what is stored (a replay after reconnect) is refused with
    /// [`StoreError::LogOverlap`], so no line is stored twice.
    pub fn append_log_chunk(&self, new: &NewLogChunk) -> Result<LogChunk, StoreError> {
        if new.first_seq < 0 || new.first_seq > new.last_seq {
            return Err(StoreError::InvalidInput(format!(
                "log chunk sequence {}..={} is not a range",
                new.first_seq, new.last_seq
            )));
        }
        if new.byte_offset < 0 || new.length < 0 {
            return Err(StoreError::InvalidInput(
                "log chunk offset and length must not be negative".into(),
            ));
        }
        let now = self.now_ms();
        self.write(|conn| {
            live_attempt(conn, new.job, new.attempt)?;
            if let Some(stored_last_seq) = last_seq(conn, new.job, new.attempt)? {
                if new.first_seq <= stored_last_seq {
                    return Err(StoreError::LogOverlap {
                        job: new.job,
                        attempt: new.attempt,
                        first_seq: new.first_seq,
                        stored_last_seq,
                    });
                }
            }
            let row = diesel::insert_into(log_chunks::table)
                .values((
                    log_chunks::job_id.eq(new.job.0),
                    log_chunks::attempt.eq(new.attempt.0),
                    log_chunks::first_seq.eq(new.first_seq),
                    log_chunks::last_seq.eq(new.last_seq),
                    log_chunks::location.eq(&new.location),
                    log_chunks::byte_offset.eq(new.byte_offset),
                    log_chunks::length.eq(new.length),
                    log_chunks::created_at.eq(now),
                ))
                .returning(<LogChunkRow as Selectable<Db>>::construct_selection())
                .get_result::<LogChunkRow>(conn)?;
            Ok(LogChunk::from(row))
        })
    }

    /// Every chunk of a job, by attempt then sequence.
    pub fn log_chunks(&self, job: JobId) -> Result<Vec<LogChunk>, StoreError> {
        Ok(log_chunks::table
            .filter(log_chunks::job_id.eq(job.0))
            .order((log_chunks::attempt.asc(), log_chunks::first_seq.asc()))
            .select(LogChunkRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(LogChunk::from)
            .collect())
    }

    /// The last sequence number stored for an attempt: what a reconnecting builder resumes
    /// after.
    pub fn last_log_seq(&self, job: JobId, attempt: Attempt) -> Result<Option<i64>, StoreError> {
        last_seq(&mut *self.conn()?, job, attempt)
    }
}

fn last_seq(
    conn: &mut super::DbConnection,
    job: JobId,
    attempt: Attempt,
) -> Result<Option<i64>, StoreError> {
    Ok(log_chunks::table
        .filter(log_chunks::job_id.eq(job.0))
        .filter(log_chunks::attempt.eq(attempt.0))
        .select(diesel::dsl::max(log_chunks::last_seq))
        .first(conn)?)
}
