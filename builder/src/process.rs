//! Running one command: its own process group, a clean environment, stdout and stderr
//! streamed line by line, and stopping the whole process tree on cancel or timeout, or
//! when the builder itself dies (see [`reaper`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use buildfleet_protocol::{JobEventKind, LogStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::BuildUser;
use crate::event_buffer::EventBuffer;
use crate::signals::ProcessGroup;

/// How long output may stay open after the command exited and its group was killed
/// (only a process that left the group can hold the pipes that long).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const TRUNCATION_MARKER: &str = " [truncated]";

/// Why a job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Cancelled by the backend, by a resume decision or by the builder's shutdown.
    Cancelled,
    /// The job's timeout elapsed (locally or as the backend reported).
    TimedOut,
}

/// Sets a job's [`StopSignal`]; the first reason wins.
#[derive(Debug, Clone)]
pub struct StopHandle(watch::Sender<Option<StopReason>>);

impl StopHandle {
    pub fn stop(&self, reason: StopReason) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Resolves when the job is cancelled or its deadline passes.
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<Option<StopReason>>,
    deadline: Option<Instant>,
}

impl StopSignal {
    pub fn new(deadline: Option<Instant>) -> (StopHandle, StopSignal) {
        let (tx, rx) = watch::channel(None);
        (StopHandle(tx), StopSignal { rx, deadline })
    }

    /// When the job times out, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The reason, if the job should stop now.
    pub fn current(&self) -> Option<StopReason> {
        if let Some(reason) = *self.rx.borrow() {
            return Some(reason);
        }
        self.deadline
            .filter(|d| Instant::now() >= *d)
            .map(|_| StopReason::TimedOut)
    }

    /// Runs `work` unless the job stops first; the one place a step races the stop signal.
    pub async fn race<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, StopReason> {
        tokio::select! {
            done = work => Ok(done),
            reason = self.stopped() => Err(reason),
        }
    }

    /// Waits for a stop reason (cancel-safe).
    pub async fn stopped(&mut self) -> StopReason {
        let deadline = self.deadline;
        let cancelled = async {
            match self.rx.wait_for(Option::is_some).await {
                Ok(reason) => reason.unwrap_or(StopReason::Cancelled),
                // Every handle is gone, so no one can cancel any more: only the deadline is left.
                Err(_) => std::future::pending().await,
            }
        };
        match deadline {
            Some(deadline) => tokio::select! {
                reason = cancelled => reason,
                () = tokio::time::sleep_until(deadline) => StopReason::TimedOut,
            },
            None => cancelled.await,
        }
    }
}

/// Where output lines go.
pub trait OutputSink {
    fn line(&self, stream: LogStream, line: String) -> impl Future<Output = ()>;
}

impl OutputSink for EventBuffer {
    async fn line(&self, stream: LogStream, line: String) {
        self.push(JobEventKind::Log { stream, line }).await;
    }
}

/// One command to run. The environment is exactly `env` (nothing is inherited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// Run (best effort) when the command is stopped, e.g. `docker kill <container>`.
    pub on_stop: Option<Vec<String>>,
    /// The user the command runs as (the builder's `build_user`); `None`: the builder's own.
    pub run_as: Option<BuildUser>,
}

#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Longer lines are cut to this many bytes (a marker included).
    pub max_line_bytes: usize,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, when the command exited by itself.
    pub code: Option<i32>,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    /// Set when the command was stopped (it was then killed, whatever its status says).
    pub stopped: Option<StopReason>,
}

impl ProcessExit {
    pub fn success(&self) -> bool {
        self.stopped.is_none() && self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for {program:?} failed: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `spec` to completion, streaming its output into `sink`. On a stop signal the whole
/// process group gets SIGTERM, then SIGKILL after the grace period; when the command
/// exits, whatever it left running in its group is killed too.
pub async fn run(
    spec: &CommandSpec,
    sink: &impl OutputSink,
    stop: &mut StopSignal,
    options: RunOptions,
) -> Result<ProcessExit, ProcessError> {
    if let Some(reason) = stop.current() {
        return Ok(ProcessExit {
            code: None,
            signal: None,
            stopped: Some(reason),
        });
    }
    let program = resolve_program(&spec.program, spec.env.get("PATH").map(String::as_str));
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // First: the closures run in order, and changing the user clears the parent-death
    // signal that `tie_to_builder` arms.
    if let Some(user) = &spec.run_as {
        switch_user(&mut command, user);
    }
    reaper::tie_to_builder(&mut command);
    let mut child = command.spawn().map_err(|source| {
        // The program may have moved since it was resolved: look again next time.
        forget_resolved(&spec.program);
        ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        }
    })?;
    let group = child.id().and_then(ProcessGroup::led_by);
    // Dropped last: whatever way this returns (or is dropped), the group is killed and the
    // reaper forgets it.
    let _registration = group.map(reaper::Registration);
    let mut stdout = child
        .stdout
        .take()
        .map(|s| LineReader::new(s, options.max_line_bytes));
    let mut stderr = child
        .stderr
        .take()
        .map(|s| LineReader::new(s, options.max_line_bytes));

    let mut stopping = Stopping {
        group,
        on_stop: spec.on_stop.as_deref(),
        reason: None,
        kill_at: None,
    };
    let mut status = None;
    let mut drain_until: Option<Instant> = None;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let kill_at = stopping.kill_at;
        tokio::select! {
            line = next_line(&mut stdout) => match line {
                Some(line) => stopping.write(sink, stop, LogStream::Stdout, line, options.grace).await,
                None => stdout = None,
            },
            line = next_line(&mut stderr) => match line {
                Some(line) => stopping.write(sink, stop, LogStream::Stderr, line, options.grace).await,
                None => stderr = None,
            },
            exit = child.wait(), if status.is_none() => {
                let exit = exit.map_err(|source| ProcessError::Wait { program: spec.program.clone(), source })?;
                status = Some(exit);
                // The command is done; background processes it left behind must not outlive it.
                if let Some(group) = group {
                    let _ = group.kill();
                }
                drain_until = Some(Instant::now() + OUTPUT_DRAIN_TIMEOUT);
            },
            reason = stop.stopped(), if stopping.reason.is_none() => {
                stopping.begin(reason, options.grace);
            },
            () = sleep_until_opt(kill_at) => stopping.kill_now(),
            () = sleep_until_opt(drain_until) => {
                tracing::warn!(program = %spec.program, "output still open after the command exited; closing it");
                break;
            },
        }
    }

    let status = status.unwrap_or_default();
    Ok(ProcessExit {
        code: status.code(),
        signal: status.signal(),
        stopped: stopping.reason,
    })
}

/// Makes the command drop to `user` (supplementary groups, group, then user) in the forked
/// child before it executes. Not `Command::uid`/`gid`: std runs those before any `pre_exec`
/// closure and then has no way to set the user's supplementary groups (its `groups` is
/// unstable), and setting them needs the privileges that `setuid` drops.
#[expect(unsafe_code, reason = "pre_exec and setgroups(2) have no safe wrapper")]
fn switch_user(command: &mut tokio::process::Command, user: &BuildUser) {
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // SAFETY (each call): `groups` is valid for its length; plain integers otherwise.
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `program` as an absolute path, looked up in `path` (the command's own `PATH`) once per
/// builder process and remembered; unchanged when it has a `/`, or is not found (the spawn
/// then reports it).
///
/// Why: with a bare name and a cleared environment that sets `PATH`, std searches `PATH`
/// in the forked child, one failing `execve` per directory before the right one (3 for
/// `sh` with a usual `PATH`). Resolved, the child execs once.
///
/// The spawn itself still forks rather than using `posix_spawn`: std takes `posix_spawn`
/// only without a `pre_exec` closure, and [`reaper::tie_to_builder`] needs one (the
/// parent-death signal and the registration with the reaper happen in the child before
/// exec, so no process of the group ever exists unregistered; `posix_spawn` can do
/// neither). Measured on the 2-vCPU benchmark VM (`/bin/sh -c :`, builder-sized parent):
/// `spawn()` returns after 1.7–2.1 ms with fork and 0.9–1.2 ms with `posix_spawn`; spawn to
/// exit 2.3–2.9 ms against 1.4–1.9 ms. Registering from the parent after `posix_spawn`
/// would save that ~0.8 ms but leave a window in which a builder killed between the spawn
/// and the registration strands the build running beside its requeued successor; the
/// guarantee is kept, and the cost is stated in docs/benchmarks.md.
pub fn resolve_program(program: &str, path: Option<&str>) -> PathBuf {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    if program.contains('/') || program.is_empty() {
        return PathBuf::from(program);
    }
    let Some(path) = path else {
        return PathBuf::from(program);
    };
    let cache = RESOLVED.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (program.to_owned(), path.to_owned());
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let found = path
        .split(':')
        // An empty or relative entry depends on the command's working directory: leave
        // those lookups to the spawn.
        .map(Path::new)
        .take_while(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    match found {
        Some(found) => {
            if let Ok(mut cache) = cache.lock() {
                cache.insert(key, found.clone());
            }
            found
        }
        None => PathBuf::from(program),
    }
}

type ResolvedPrograms = std::sync::Mutex<std::collections::HashMap<(String, String), PathBuf>>;
static RESOLVED: std::sync::OnceLock<ResolvedPrograms> = std::sync::OnceLock::new();

fn forget_resolved(program: &str) {
    if let Some(Ok(mut cache)) = RESOLVED.get().map(|c| c.lock()) {
        cache.retain(|(name, _), _| name != program);
    }
}

/// The stop state machine of one command: SIGTERM, then SIGKILL at `kill_at`.
struct Stopping<'a> {
    group: Option<ProcessGroup>,
    on_stop: Option<&'a [String]>,
    reason: Option<StopReason>,
    kill_at: Option<Instant>,
}

impl Stopping<'_> {
    fn begin(&mut self, reason: StopReason, grace: Duration) {
        self.reason = Some(reason);
        if let Some(group) = self.group {
            let _ = group.terminate();
        }
        if let Some([program, args @ ..]) = self.on_stop {
            let mut hook = tokio::process::Command::new(program);
            hook.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            tokio::spawn(async move {
                if let Err(e) = hook.status().await {
                    tracing::warn!(error = %e, "stop hook failed");
                }
            });
        }
        self.kill_at = Some(Instant::now() + grace);
    }

    fn kill_now(&mut self) {
        if let Some(group) = self.group {
            let _ = group.kill();
        }
        self.kill_at = None;
    }

    /// Hands a line to the sink; a full sink must not delay a stop, so it races the signal.
    async fn write(
        &mut self,
        sink: &impl OutputSink,
        stop: &mut StopSignal,
        stream: LogStream,
        line: String,
        grace: Duration,
    ) {
        if self.reason.is_some() {
            sink.line(stream, line).await;
            return;
        }
        tokio::select! {
            () = sink.line(stream, line) => {}
            reason = stop.stopped() => self.begin(reason, grace),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_line<R: AsyncRead + Unpin>(reader: &mut Option<LineReader<R>>) -> Option<String> {
    match reader {
        Some(reader) => reader.next_line().await,
        None => std::future::pending().await,
    }
}

/// Reads lines of at most `max` bytes, keeping partial lines in itself so that it is
/// cancel-safe inside `select!`; the rest of an overlong line is skipped.
struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    truncated: bool,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: R, max: usize) -> Self {
        LineReader {
            reader: BufReader::new(reader),
            line: Vec::new(),
            truncated: false,
            max: max.max(32),
        }
    }

    /// The next line without its newline; `None` at end of output (or on a read error,
    /// which for a pipe means the same).
    async fn next_line(&mut self) -> Option<String> {
        loop {
            let chunk = match self.reader.fill_buf().await {
                Ok(chunk) => chunk,
                Err(_) => return self.finish_last(),
            };
            if chunk.is_empty() {
                return self.finish_last();
            }
            let (take, end_of_line) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            let room = self.max.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..take.min(room)]);
            self.truncated |= take > room;
            self.reader.consume(take + usize::from(end_of_line));
            if end_of_line {
                return Some(self.take_line());
            }
        }
    }

    fn finish_last(&mut self) -> Option<String> {
        (!self.line.is_empty() || self.truncated).then(|| self.take_line())
    }

    fn take_line(&mut self) -> String {
        let bytes = std::mem::take(&mut self.line);
        let truncated = std::mem::take(&mut self.truncated);
        let mut line = String::from_utf8_lossy(&bytes).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        // Lossy decoding can grow the text, and the marker needs room.
        if truncated || line.len() > self.max {
            let mut cut = self
                .max
                .saturating_sub(TRUNCATION_MARKER.len())
                .min(line.len());
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(TRUNCATION_MARKER);
        }
        line
    }
}

/// Build processes die with the builder, however it dies (SIGKILL and OOM kills included),
/// so an attempt that was given up and requeued never runs beside its successor.
///
/// Every job command leads its own process group. A parent-death signal alone is not
/// enough: `PR_SET_PDEATHSIG` reaches only the process that set it (it is cleared in
/// children at fork), so the group leader would die but `sleep 1000 &` would live on; and
/// making the builder a child subreaper (`PR_SET_CHILD_SUBREAPER`) only changes who reaps
/// orphans, it kills nothing when the builder dies. So the builder starts one tiny
/// supervising shim, the reaper (`/bin/sh` running [`REAPER_SCRIPT`]), whose stdin is a
/// pipe from the builder. Each job's group leader registers its pgid on that pipe itself,
/// in the forked child before `exec` (so no process of the group exists unregistered); the
/// builder deregisters the group once it has killed it. When the builder dies the kernel
/// closes its end of the pipe, the reaper reads end-of-file and SIGKILLs every group still
/// registered. The leader also gets `PR_SET_PDEATHSIG = SIGKILL` as a second line should
/// the reaper be missing; it is spawned from the actor thread that runs the jobs, which
/// lives as long as the builder (the signal fires when the forking *thread* exits).
pub mod reaper {
    use std::io::Write;
    use std::os::fd::{AsRawFd, RawFd};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::OnceLock;

    use crate::signals::ProcessGroup;

    /// Reads `+PGID` / `-PGID` lines; at end of input kills what is still registered.
    /// Terminal and termination signals are ignored: only the builder's end closing ends it.
    pub const REAPER_SCRIPT: &str = r#"trap '' HUP INT TERM QUIT PIPE
groups=' '
while IFS= read -r line; do
  case $line in
    +*) groups="$groups${line#+} " ;;
    -*) g=${line#-}
        case $groups in *" $g "*) groups="${groups%% $g *} ${groups#* $g }" ;; esac ;;
  esac
done
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done
"#;

    struct Reaper {
        stdin: ChildStdin,
        _child: Child,
    }

    /// The builder process's reaper, started at the first job (one per process, shared by
    /// builders embedded in one process); `None` if it could not start.
    fn reaper() -> Option<&'static Reaper> {
        static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();
        REAPER
            .get_or_init(|| {
                let started = Command::new("/bin/sh")
                    .args(["-c", REAPER_SCRIPT])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match started {
                    Ok(mut child) => {
                        let stdin = child.stdin.take()?;
                        Some(Reaper {
                            stdin,
                            _child: child,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the process reaper: background processes of a job may outlive a killed builder");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The reaper's pipe end, as a raw fd the forked child can write to.
    fn reaper_fd() -> Option<RawFd> {
        reaper().map(|r| r.stdin.as_raw_fd())
    }

    /// Makes the command's process register its group with the reaper and die with the
    /// builder thread (parent-death signal) before it executes.
    #[expect(unsafe_code, reason = "pre_exec and prctl(2) have no safe wrapper")]
    pub fn tie_to_builder(command: &mut tokio::process::Command) {
        let fd = reaper_fd();
        let builder = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (getpid, getppid, prctl, signal, write) on stack
        // memory; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                // SAFETY (each call): plain integer arguments, and `line` outlives `write`.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The builder died before the signal was armed: do not run orphaned.
                if libc::getppid() != builder {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if let Some(fd) = fd {
                    let mut line = [0u8; 24];
                    let len = format_line(b'+', libc::getpid(), &mut line);
                    // A reaper that died must not SIGPIPE this child; the old disposition
                    // (the default, set by std) is restored for the command.
                    let previous = libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                    let written = libc::write(fd, line.as_ptr().cast(), len);
                    libc::signal(libc::SIGPIPE, previous);
                    let _ = written;
                }
                Ok(())
            });
        }
    }

    /// `+123\n` (or `-123\n`) into `buf` without allocating; returns its length.
    fn format_line(sign: u8, pid: libc::pid_t, buf: &mut [u8; 24]) -> usize {
        let mut digits = [0u8; 20];
        let mut n = u64::try_from(pid).unwrap_or(0);
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[0] = sign;
        for i in 0..count {
            buf[1 + i] = digits[count - 1 - i];
        }
        buf[1 + count] = b'\n';
        count + 2
    }

    /// A registered group: killed and deregistered when dropped.
    pub struct Registration(pub ProcessGroup);

    impl Drop for Registration {
        fn drop(&mut self) {
            let _ = self.0.kill();
            if let Some(reaper) = reaper() {
                let mut line = [0u8; 24];
                let len = format_line(b'-', self.0.id(), &mut line);
                // One write of a short line: atomic on a pipe, however many jobs write.
                let _ = (&reaper.stdin).write_all(&line[..len]);
            }
        }
    }
}
