//! A PostgreSQL server of the test's own (its own data directory and port on 127.0.0.1),
//! for tests that restart the database: the shared test server cannot be restarted under
//! everyone else's tests. Made with the installed server binaries, as
//! scripts/test-postgres.sh does; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// The newest installed PostgreSQL's binaries, if any.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs a server binary, as the `postgres` account when we are root (PostgreSQL refuses
/// root); whether it succeeded.
fn try_as_postgres(bin: &Path, tool: &str, args: &[&str]) -> bool {
    let tool_path = bin.join(tool);
    let mut command = if nix_is_root() {
        let line = std::iter::once(tool_path.display().to_string())
            .chain(args.iter().map(|a| format!("'{a}'")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut su = Command::new("su");
        su.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        su
    } else {
        let mut direct = Command::new(&tool_path);
        direct.args(args);
        direct
    };
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_as_postgres(bin: &Path, tool: &str, args: &[&str]) {
    assert!(try_as_postgres(bin, tool, args), "{tool} {args:?} failed");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Starts one, or `None` (said on stderr) when PostgreSQL is not installed.
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = server_bin() else {
            eprintln!("skipped: PostgreSQL is not installed (apt-get install -y postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("buildfleet-private-pg")
            .tempdir()
            .expect("temp dir");
        if nix_is_root() {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let data = dir.path().join("data");
        run_as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let server = PrivatePostgres { bin, dir, port };
        server.pg_ctl("start");
        Some(server)
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!(
            "-k /tmp -p {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        run_as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-m", "fast", "-o", &options, action,
            ],
        );
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: connections are cut) and starts it again.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        // Nothing to report from a drop: a server that will not stop dies with its directory.
        let _ = try_as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "stop"],
        );
    }
}
