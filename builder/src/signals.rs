//! The only unsafe code of the builder: signalling a whole process group with `kill(2)`.
//!
//! Recipes run in their own process group, so one signal reaches every process a build
//! started, including background children that outlive the command itself.

use std::io;

/// A process group id (the pid of the group's leader, as set by `process_group(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(libc::pid_t);

impl ProcessGroup {
    /// The group led by `leader_pid`; `None` for ids that would address other groups
    /// (0 is the caller's group, 1 is init's; negative ids are not pids).
    pub fn led_by(leader_pid: u32) -> Option<Self> {
        let pid = libc::pid_t::try_from(leader_pid).ok()?;
        (pid > 1).then_some(ProcessGroup(pid))
    }

    pub fn id(self) -> i32 {
        self.0
    }

    /// Sends SIGTERM to every process of the group.
    pub fn terminate(self) -> io::Result<()> {
        signal_group(self.0, libc::SIGTERM)
    }

    /// Sends SIGKILL to every process of the group.
    pub fn kill(self) -> io::Result<()> {
        signal_group(self.0, libc::SIGKILL)
    }

    /// True while at least one process of the group exists (signal 0 probes without
    /// delivering anything; ESRCH means the group is gone).
    pub fn exists(self) -> bool {
        match signal_group(self.0, 0) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() != Some(libc::ESRCH),
        }
    }
}

#[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
fn signal_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pgid > 1` is
    // guaranteed by `ProcessGroup::led_by`, so `-pgid` addresses exactly that group and
    // never "every process" (-1) or our own group (0).
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
