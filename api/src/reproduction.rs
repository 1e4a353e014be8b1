//! A reproducible job's runs and verdict (`reproduction` in `GET /api/v1/jobs/{id}`): a job
//! submitted with `reproduce: k` above 1 is built by k independent builders one after the
//! other and published only when their artifacts agree.

use serde::{Deserialize, Serialize};

use crate::state::OnMismatch;

crate::string_enum!(
    /// How a reproducible job's runs compared, once decided.
    ReproductionVerdict, "reproduction verdict" {
        /// Every run produced the same artifacts: published with every builder's signature.
        Reproduced => "reproduced",
        /// The runs' artifacts differ: the job is `unreproducible`.
        Mismatch => "mismatch",
        /// A run failed after an earlier run succeeded: the job is `unreproducible`.
        RunFailed => "run_failed",
    }
);

/// One artifact of a run, as its builder declared and uploaded it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunArtifact {
    pub name: String,
    pub size: i64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// A completed run of a reproducible job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReproductionRun {
    /// 1 for the first run, up to `required`.
    pub run: i32,
    /// The job attempt the run was.
    pub attempt: i32,
    pub builder: i64,
    /// The builder's name, when it is still admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_name: Option<String>,
    /// The independence label's name (`[scheduler] reproduce_independence_label`) and the
    /// builder's value of it (`None`: the builder had none; it was then told apart by its id
    /// alone).
    pub owner_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Empty for a run that failed (the evidence says how).
    pub artifacts: Vec<RunArtifact>,
    pub finished_at: i64,
}

/// One file inside an artifact archive (a tar.gz entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    pub size: u64,
    /// Lowercase hex SHA-256 of the file's contents (absent for directories and links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `file`, `dir`, `symlink -> target`, …
    pub kind: String,
}

/// An entry that differs between runs: what each run had (`None`: absent in that run), and
/// for a text file a unified diff of the first run against the differing one (bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDiff {
    pub path: String,
    pub runs: Vec<Option<ArchiveEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_diff: Option<String>,
}

/// An artifact whose digest differs between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDiff {
    pub name: String,
    /// The artifact's SHA-256 in each run (`None`: the run did not produce it).
    pub sha256: Vec<Option<String>>,
    /// The entries that differ (for tar.gz archives), in path order, at most a bounded
    /// number (`entries_truncated` says when more differed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryDiff>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub entries_truncated: bool,
    /// Why the entries could not be compared (not a tar.gz, a run's blob gone, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a reproducible job ended `unreproducible`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReproductionEvidence {
    /// One line for people: what differed.
    pub summary: String,
    /// The artifacts whose digests differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactDiff>,
    /// A run's failure (`run_failed`): its error as the builder reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// `reproduction` of a job submitted with `reproduce` above 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproduction {
    /// How many independent builders must agree.
    pub required: i32,
    pub on_mismatch: OnMismatch,
    /// The runs completed so far, in order.
    pub runs: Vec<ReproductionRun>,
    /// `None` while runs remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ReproductionVerdict>,
    /// Set when the runs disagreed and the first run's artifacts were published anyway
    /// (`on_mismatch: publish_first`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub published_first: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<ReproductionEvidence>,
}

impl Reproduction {
    /// For people: "reproduced by 2 of 2 builders", "unreproducible", or the runs so far.
    pub fn describe(&self) -> String {
        match self.verdict {
            Some(ReproductionVerdict::Reproduced) => format!(
                "reproduced by {} of {} builders",
                self.runs.len(),
                self.required
            ),
            Some(ReproductionVerdict::Mismatch | ReproductionVerdict::RunFailed) => {
                let first = if self.published_first {
                    " (the first run's artifacts were published anyway)"
                } else {
                    ""
                };
                format!("unreproducible{first}")
            }
            None => format!(
                "{} of {} independent runs done",
                self.runs.len(),
                self.required
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_reads_as_the_dashboard_says_it() {
        let run = ReproductionRun {
            run: 1,
            attempt: 1,
            builder: 1,
            builder_name: None,
            owner_label: "owner".into(),
            owner: None,
            artifacts: vec![],
            finished_at: 0,
        };
        let mut r = Reproduction {
            required: 2,
            on_mismatch: OnMismatch::Fail,
            runs: vec![run.clone()],
            verdict: None,
            published_first: false,
            evidence: None,
        };
        assert_eq!(r.describe(), "1 of 2 independent runs done");
        r.runs.push(run);
        r.verdict = Some(ReproductionVerdict::Reproduced);
        assert_eq!(r.describe(), "reproduced by 2 of 2 builders");
        r.verdict = Some(ReproductionVerdict::Mismatch);
        assert_eq!(r.describe(), "unreproducible");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"], "mismatch");
        assert!(json.get("published_first").is_none());
    }
}
