//! The only module with `unsafe` code: thin, documented wrappers around the
//! system calls that `nix` does not cover (clone3 with `CLONE_INTO_CGROUP`,
//! pidfd signals, `close_range`) and the few libc calls whose safety depends
//! on process state (signal dispositions).
//!
//! Invariant: every `unsafe` block carries a `// SAFETY:` comment, and every
//! function exported from here is safe to call; preconditions that cannot be
//! expressed in types are checked at run time (for example `fork_into_cgroup`
//! refuses to run in a multi-threaded process).

pub mod pidfd;
pub mod probe;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_PIDFD`: return a pidfd for the child.
const CLONE_PIDFD: u64 = 0x0000_1000;
/// `CLONE_INTO_CGROUP` (Linux 5.7): start the child in the cgroup given by fd.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` from `<linux/sched.h>` (version 2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What `fork_into_cgroup` returns in each of the two processes.
pub enum Forked {
    /// In the parent: the child's pid and a pidfd referring to it.
    Parent { pid: i32, pidfd: OwnedFd },
    /// In the child.
    Child,
}

/// Number of threads of this process, from `/proc/self/status`.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Fork (clone3 without `CLONE_VM`) with a pidfd, optionally straight into
/// the cgroup `cgroup_dir` and with extra `CLONE_NEW*` namespace flags.
///
/// Fails with `EDEADLK`-like `Other` error when the process has more than one
/// thread: after a fork only the calling thread exists, and locks held by the
/// others (allocator, stdio) would stay locked in the child forever.
pub fn fork_into_cgroup(cgroup_dir: Option<BorrowedFd<'_>>, ns_flags: u64) -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork: the supervisor has {threads} threads (must be 1 before spawn)"
        )));
    }
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | ns_flags,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM and with a null stack behaves like
    // fork(2): the child gets a copy of the address space. We checked above
    // that this process has a single thread, so no lock can be held by a
    // thread that does not exist in the child. `args` and `pidfd` are valid
    // for the duration of the call and the size passed matches the struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned file
            // descriptor in `pidfd` when the call succeeded; nothing else owns it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// Send `signal` to the process referred to by `pidfd` (no pid reuse race).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open fd; a null siginfo is allowed
    // and means "as if sent by kill(2)".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mark every file descriptor from `first` upwards close-on-exec, so that
/// nothing the supervisor had open leaks into the agent.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds;
    // it closes nothing, so no owned fd in this process becomes dangling.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set SIGPIPE to ignored in the supervisor: a closed stdout must show up as
/// `EPIPE` on write, not kill the process that has to tear the run down.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_IGN has no handler code that could run
    // concurrently; it only changes the disposition of SIGPIPE.
    let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the child before `execve`: every signal back to its default
/// disposition. Ignored signals survive exec, so a supervisor's SIG_IGN for
/// SIGPIPE would otherwise leak into the agent.
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler; failures (for signal numbers
        // reserved by libc) are harmless and ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Immediately terminate the calling process without running destructors or
/// atexit handlers (used in the forked child when setup fails).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Make the mount at `path` and every mount below it read-only, nosuid
/// and nodev (`mount_setattr(2)` with `AT_RECURSIVE`, Linux 5.12). Flags
/// are only added, so mounts locked by a user namespace accept it.
pub fn make_tree_read_only(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    /// `struct mount_attr` of `<linux/mount.h>`.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads a NUL-terminated path and `size` bytes of
    // `attr`; both outlive the call, and `size` is the struct's own size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bring the loopback interface up (in a fresh network namespace it starts
/// down, and agents expect 127.0.0.1 to work).
pub fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into its union; `req` outlives the call and the socket fd is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFFLAGS the union holds ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above, SIOCSIFFLAGS takes the same struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
