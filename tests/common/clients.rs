//! Helpers for tests that run real clients inside the sandbox: the
//! network tier's availability check, a python with given modules (a
//! private venv filled from PyPI when the system python lacks them), and
//! reading a run's `net_request` events.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

/// The private venv for the Python clients (created when missing).
pub const VENV: &str = "/var/cache/vallignus-test-venv";
/// What the venv gets; installed together so one pip run serves every test.
pub const VENV_PACKAGES: &[&str] = &["requests", "openai"];

pub fn network_available(test: &str) -> bool {
    if !cgroups_available(test) {
        return false;
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !nft {
        skip(test, "nft is not installed (apt-get install nftables)");
    }
    nft
}

/// `name` found in PATH (or the usual system directories), as an absolute path.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn succeeds(cmd: &mut Command, timeout: Duration) -> bool {
    code(&output_with_timeout(
        cmd.stdin(std::process::Stdio::null()),
        timeout,
    )) == 0
}

/// A python3 that the agent can run by absolute path (a pyenv shim would
/// not do: resolve to the real interpreter).
pub fn system_python() -> Option<PathBuf> {
    if Path::new("/usr/bin/python3").is_file() {
        return Some("/usr/bin/python3".into());
    }
    let py = which("python3")?;
    let o = output_with_timeout(
        Command::new(py).args(["-c", "import sys; print(sys.executable)"]),
        Duration::from_secs(20),
    );
    let exe = stdout(&o).trim().to_owned();
    (code(&o) == 0 && !exe.is_empty()).then(|| exe.into())
}

pub fn imports(python: &Path, modules: &[&str]) -> bool {
    let script = format!("import {}", modules.join(", "));
    succeeds(
        Command::new(python).args(["-c", &script]),
        Duration::from_secs(60),
    )
}

/// A python with `modules`: the system one if it has them, else the private
/// venv, created (and filled from PyPI) under an exclusive lock when missing.
/// `Err` is the reason to skip.
pub fn python_with(modules: &[&str]) -> Result<PathBuf, String> {
    if let Some(py) = system_python() {
        if imports(&py, modules) {
            return Ok(py);
        }
    }
    static VENV_PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let venv_python = VENV_PYTHON.get_or_init(prepare_venv).clone()?;
    if imports(&venv_python, modules) {
        Ok(venv_python)
    } else {
        Err(format!("{VENV} lacks {modules:?}"))
    }
}

pub fn prepare_venv() -> Result<PathBuf, String> {
    let venv = Path::new(VENV);
    let python = venv.join("bin/python");
    // Serialise with other test processes doing the same.
    std::fs::create_dir_all("/var/cache").map_err(|e| format!("/var/cache: {e}"))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{VENV}.lock"))
        .map_err(|e| format!("{VENV}.lock: {e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("flock {VENV}.lock: {e}"))?;
    if python.exists() && imports(&python, VENV_PACKAGES) {
        return Ok(python);
    }
    let pip_ok = |py: &Path| {
        succeeds(
            Command::new(py).args(["-m", "pip", "--version"]),
            Duration::from_secs(60),
        )
    };
    if !python.exists() || !pip_ok(&python) {
        // Missing or half-made (an interrupted earlier attempt): start over.
        let _ = std::fs::remove_dir_all(venv);
        let base = system_python().ok_or("no python3 to create the venv with")?;
        let o = output_with_timeout(
            Command::new(&base).args(["-m", "venv", VENV]),
            Duration::from_secs(300),
        );
        if code(&o) != 0 || !pip_ok(&python) {
            return Err(format!(
                "{} -m venv {VENV} failed: {}",
                base.display(),
                stderr(&o).lines().last().unwrap_or_default()
            ));
        }
    }
    let o = output_with_timeout(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(VENV_PACKAGES),
        Duration::from_secs(600),
    );
    if code(&o) != 0 {
        return Err(format!(
            "pip install {VENV_PACKAGES:?} failed: {}",
            stderr(&o).lines().last().unwrap_or_default()
        ));
    }
    Ok(python)
}

pub fn net_requests(h: &Home) -> Vec<serde_json::Value> {
    h.events()
        .into_iter()
        .filter(|e| e["type"] == "net_request")
        .collect()
}

/// The single line of `out` that starts with `prefix`.
pub fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = out.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "one line {prefix:?} expected in:\n{out}");
    found[0]
}
