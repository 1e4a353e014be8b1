//! What this machine allows, measured in the same run as the figures they bound: starting a
//! process until its first instruction (and until it is reaped), and a loopback TCP round
//! trip. A job's path cannot beat spawn + a round trip.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::stats::{summarize, Summary};

/// Wall clock in nanoseconds since the epoch.
pub fn unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

/// A non-negative duration from nanoseconds (a clock step makes a negative one zero).
pub fn duration_ns(ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

/// The `bf-stamp <ns>` a stamp process printed, found anywhere in `text`.
pub fn parse_stamp(text: &str) -> Option<i128> {
    let rest = text.split("bf-stamp ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub struct SpawnFloor {
    /// `spawn` called → the program's first instruction (its printed clock).
    pub first_instruction: Summary,
    /// `spawn` called → the exit reaped.
    pub reaped: Summary,
}

/// Spawns the stamp program `runs` times the cheapest way std knows (an absolute path and
/// no `pre_exec`: `posix_spawn`), with its output piped as a builder pipes a command's.
pub fn spawn_floor(stamp: &Path, runs: usize) -> anyhow::Result<SpawnFloor> {
    let mut first = Vec::with_capacity(runs);
    let mut reaped = Vec::with_capacity(runs);
    for i in 0..runs + 5 {
        let started_ns = unix_ns();
        let started = Instant::now();
        let mut child = Command::new(stamp)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", stamp.display()))?;
        let mut out = String::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        let status = child.wait()?;
        let done = started.elapsed();
        if !status.success() {
            bail!("{} exited with {status}", stamp.display());
        }
        let stamp_ns = parse_stamp(&out).context("the stamp program printed no stamp")?;
        // The first few warm the page cache.
        if i >= 5 {
            first.push(duration_ns(stamp_ns - started_ns));
            reaped.push(done);
        }
    }
    Ok(SpawnFloor {
        first_instruction: summarize(&first).context("no spawns")?,
        reaped: summarize(&reaped).context("no spawns")?,
    })
}

/// One-byte ping-pongs over a loopback TCP connection with `TCP_NODELAY`, `runs` times.
pub fn loopback_round_trip(runs: usize) -> anyhow::Result<Summary> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        loop {
            if socket.read(&mut byte)? == 0 {
                return Ok(());
            }
            socket.write_all(&byte)?;
        }
    });
    let mut socket = TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(runs);
    let mut byte = [7u8; 1];
    for i in 0..runs + 50 {
        let started = Instant::now();
        socket.write_all(&byte)?;
        socket.read_exact(&mut byte)?;
        if i >= 50 {
            samples.push(started.elapsed());
        }
    }
    drop(socket);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    summarize(&samples).context("no round trips")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_log_text() {
        assert_eq!(parse_stamp("bf-stamp 123\n"), Some(123));
        assert_eq!(
            parse_stamp("2026-01-01T00:00:00Z stdout bf-stamp 1732420000123456789"),
            Some(1_732_420_000_123_456_789)
        );
        assert_eq!(parse_stamp("nothing here"), None);
    }

    #[test]
    fn loopback_round_trips_are_measured() {
        let s = loopback_round_trip(20).expect("round trips");
        assert!(s.p50 > Duration::ZERO && s.p50 < Duration::from_secs(1));
    }
}
