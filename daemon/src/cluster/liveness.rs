//! Proof that a daemon is gone. A peer whose API is silent may be dead, frozen (SIGSTOP, a
//! debugger, a VM paused) or cut off: only a dead one's files may be touched (their write
//! marks cleared), since a frozen writer that resumes writes on into them. A daemon tells
//! which process it is in its `POST /run/check` answer ([`ProcessId`]); a coordinator on the
//! same host (the same boot and PID namespace) proves it gone when that process no longer
//! exists. Across hosts nothing is proven: the part stays unreachable, then unknown.

pub use crate::contract::ProcessId;

/// What can be said of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (perhaps stopped): its files are its own.
    Alive,
    /// It has ended: proven.
    Gone,
    /// It runs on another host or in another PID namespace: nothing can be proven from here.
    Elsewhere,
}

impl ProcessId {
    /// This process, if `/proc` tells.
    pub fn this() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            boot: boot_id()?,
            pid_ns: pid_namespace()?,
            pid,
            started: start_ticks(pid)?,
        })
    }

    /// Whether the process still runs, as far as this host can tell.
    pub fn liveness(&self) -> Liveness {
        if boot_id().as_deref() != Some(&self.boot)
            || pid_namespace().as_deref() != Some(&self.pid_ns)
        {
            return Liveness::Elsewhere;
        }
        match start_ticks(self.pid) {
            Some(t) if t == self.started => Liveness::Alive,
            _ => Liveness::Gone,
        }
    }
}

fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(text.trim().to_owned())
}

fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Field 22 of `/proc/<pid>/stat` (after the command name, which may hold spaces and
/// parentheses: the fields start after its last `)`).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_an_ended_one_gone() {
        let me = ProcessId::this().expect("/proc");
        assert_eq!(me.liveness(), Liveness::Alive);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = start_ticks(pid).unwrap_or(0);
        child.wait().unwrap();
        let ended = ProcessId {
            pid,
            started,
            ..me.clone()
        };
        assert_eq!(ended.liveness(), Liveness::Gone);
        let reused = ProcessId {
            started: me.started + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Gone, "same pid, another start");
        let far = ProcessId {
            boot: "another".into(),
            ..me
        };
        assert_eq!(far.liveness(), Liveness::Elsewhere);
    }
}
