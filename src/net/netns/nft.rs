//! Running the `nft` tool: a generated ruleset on its standard input
//! (`nft -f -`), applied by the kernel as one atomic transaction.
//!
//! Invariants:
//! - `nft` is looked up in the system directories first and then on `PATH`;
//!   when it cannot be found, callers get [`NetError::ToolMissing`] before
//!   anything is changed (fail closed: no rules means no setup at all);
//! - `nft` runs with an empty environment and in the network namespace of
//!   the *calling thread* (a spawned process inherits the namespaces of the
//!   thread that spawned it), which is how the ruleset reaches the agent's
//!   namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::NetError;

/// How long `nft` may take to apply a ruleset (it takes milliseconds).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `child` exits within `timeout` (waited for on a pidfd; the
/// child is not reaped). Without a pidfd (Linux < 5.3), true at once: the
/// caller then waits without a limit, as before.
fn exits_within(child: &std::process::Child, timeout: std::time::Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let Ok(pid) = i32::try_from(child.id()) else {
        return true;
    };
    let Ok(pidfd) = crate::sys::pidfd::pidfd_open(pid) else {
        return true;
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) => continue,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Where `nft` is looked for before `PATH`.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The `nft` binary, or [`NetError::ToolMissing`].
pub fn locate() -> Result<PathBuf, NetError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    dirs.extend(std::env::split_paths(&path_var));
    locate_in(&dirs)
}

/// The first executable `nft` in `dirs`, or [`NetError::ToolMissing`].
pub fn locate_in(dirs: &[PathBuf]) -> Result<PathBuf, NetError> {
    dirs.iter()
        .map(|dir| dir.join("nft"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| NetError::ToolMissing {
            tool: "nft",
            package: "nftables",
            searched: dirs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Run `nft -f -` with `script` on stdin; `what` names the ruleset in
/// errors. An error unless nft exited with status 0.
pub fn apply(nft: &Path, script: &str, what: &str) -> Result<(), NetError> {
    let command = format!("{} -f -", nft.display());
    let spawn_err = |source| NetError::Spawn {
        command: command.clone(),
        what: what.to_owned(),
        source,
    };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut pipe) = child.stdin.take() {
        // A ruleset is far below the pipe's capacity, so this cannot block
        // on a slow nft; a write error (nft exited early) shows up in its
        // status and stderr. Dropping `pipe` closes it: end of input.
        let _ = pipe.write_all(script.as_bytes());
    }
    // The agent waits for these rules: an nft that hangs (a kernel stuck
    // on a lock, a broken installation) must not hang the run with it.
    if !exits_within(&child, TIMEOUT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(NetError::Nft {
            what: what.to_owned(),
            status: format!("killed after {} s", TIMEOUT.as_secs()),
            stderr: "nft did not finish".into(),
        });
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetError::Nft {
            what: what.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
