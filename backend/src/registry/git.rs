//! A git index, followed as docs.rs does: fetch the index's HEAD into a bare repository of
//! our own, diff the fetched commit against the last one processed, and read the changed
//! crate files at both commits. Runs the `git` CLI (any git ≥ 2 on PATH), so the fetch
//! speaks every transport git does and nothing is parsed but its plain output.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::FollowError;

/// The follower's bare repository of one registry's index.
pub struct GitIndex {
    dir: PathBuf,
    url: String,
    /// One fetch at a time: a poll round and a backfill (or a crate submission) fetching
    /// into the same repository at once race on its object files.
    fetching: tokio::sync::Mutex<()>,
}

/// The branch our fetch writes; only this repository has it.
const FOLLOWED_REF: &str = "refs/heads/followed";

impl GitIndex {
    pub fn new(dir: PathBuf, url: String) -> Self {
        GitIndex {
            dir,
            url,
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Fetches the index's HEAD and returns the commit fetched.
    pub async fn fetch(&self) -> Result<String, FollowError> {
        let _one_at_a_time = self.fetching.lock().await;
        if !self.dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| FollowError::Git(format!("creating {}: {e}", self.dir.display())))?;
            self.git(&["init", "--quiet", "--bare"]).await?;
        }
        let refspec = format!("+HEAD:{FOLLOWED_REF}");
        self.git(&["fetch", "--quiet", "--no-tags", &self.url, &refspec])
            .await?;
        Ok(self
            .git(&["rev-parse", FOLLOWED_REF])
            .await?
            .trim()
            .to_owned())
    }

    /// The files that differ between two commits, as paths in the index.
    pub async fn changed_files(&self, old: &str, new: &str) -> Result<Vec<String>, FollowError> {
        let out = self
            .git(&["diff", "--name-only", "--no-renames", "-z", old, new])
            .await?;
        Ok(out
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// A file's text at `commit`; `None` when it does not exist there.
    pub async fn file_at(&self, commit: &str, path: &str) -> Result<Option<String>, FollowError> {
        let spec = format!("{commit}:{path}");
        let exists = self.git_status(&["cat-file", "-e", &spec]).await?;
        if !exists {
            return Ok(None);
        }
        self.git(&["show", &spec]).await.map(Some)
    }

    async fn git(&self, args: &[&str]) -> Result<String, FollowError> {
        let output = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| FollowError::Git(format!("running git: {e}")))?;
        if !output.status.success() {
            return Err(FollowError::Git(format!(
                "git {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        String::from_utf8(output.stdout)
            .map_err(|_| FollowError::Git("git printed something that is not UTF-8".into()))
    }

    async fn git_status(&self, args: &[&str]) -> Result<bool, FollowError> {
        let status = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| FollowError::Git(format!("running git: {e}")))?;
        Ok(status.success())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            // Never ask for credentials on a terminal: fail instead.
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}
