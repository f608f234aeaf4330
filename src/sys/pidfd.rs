//! `pidfd_open(2)`: a file descriptor that refers to one process for as long
//! as the descriptor lives, immune to pid reuse. Used to enter a child's
//! namespaces with `setns(pidfd, ...)` (Linux 5.8+) when the caller only
//! knows the pid.
//!
//! Invariant: the returned fd is close-on-exec (pidfds always are).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Open a pidfd for `pid`. Fails with `ESRCH` when no such process exists.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and a flags word (0) and returns a new
    // fd or -1; it touches no memory of this process.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("pidfd_open returned a bad fd"))?;
    // SAFETY: `fd` was just returned by the kernel, is open, and is owned by
    // nobody else; OwnedFd takes over closing it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
