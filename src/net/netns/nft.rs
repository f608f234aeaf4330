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
