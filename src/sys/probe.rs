//! Harmless calls of system calls that the seccomp profiles deny, so that
//! tests (and `doctor`) can observe whether a filter is in force.
//!
//! Invariants:
//! - every call is made with arguments that make the kernel fail early and
//!   change nothing when no filter stops it (a null or zero-sized argument
//!   structure, a descriptor that is not a terminal, an unused flag set);
//!   the exceptions fork a child that does its one call and exits at once
//!   ([`clone_and_exit`], [`ptrace_traceme_in_child`]);
//! - no pointer handed to the kernel refers to anything but a live local;
//! - every function is safe to call in any process, threaded or not, and
//!   returns the raw outcome (`Ok` or the errno) without interpreting it.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// The namespace flags of `clone(2)` (`CLONE_NEWNS` .. `CLONE_NEWNET`).
pub const CLONE_NEW_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// `setxattrat(2)` (Linux 6.13), the first system call number after `mseal`
/// (462); the same number on x86_64 and aarch64.
const SYS_SETXATTRAT: libc::c_long = 463;

fn check(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// `io_uring_setup(0, NULL)`: `EINVAL`/`EFAULT` without a filter.
pub fn io_uring_setup() -> Result<(), Errno> {
    // SAFETY: a null params pointer is never dereferenced by the kernel
    // without checking (copy_from_user fails with EFAULT); no memory of ours
    // is touched and no resource is created on failure.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            0 as libc::c_uint,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(rc).map(drop)
}

/// `bpf(-1, NULL, 0)` (no such command): `EINVAL` (or `EPERM` where
/// unprivileged bpf is off) without a filter.
pub fn bpf() -> Result<(), Errno> {
    // SAFETY: an invalid command, a zero size and a null attribute pointer:
    // the kernel copies nothing from us and creates nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            -1 as libc::c_int,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_uint,
        )
    };
    check(rc).map(drop)
}

/// `clone3(NULL, 0)`: `EINVAL` without a filter (the size is below the
/// smallest `struct clone_args`), so no process is ever created.
pub fn clone3_empty() -> Result<(), Errno> {
    // SAFETY: size 0 makes the kernel reject the call before it reads the
    // (null) argument pointer; no child can be created.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::size_t,
        )
    };
    check(rc).map(drop)
}

/// Legacy `clone(2)` with `SIGCHLD` and the namespace flags `ns_flags`
/// (a subset of [`CLONE_NEW_FLAGS`], else `EINVAL` without a syscall); the
/// child `_exit`s at once and is reaped here.
pub fn clone_and_exit(ns_flags: u64) -> Result<(), Errno> {
    if ns_flags & !CLONE_NEW_FLAGS != 0 {
        return Err(Errno::EINVAL);
    }
    fn exit_zero() -> i32 {
        0
    }
    in_child(ns_flags, exit_zero).map(drop)
}

/// `ptrace(PTRACE_TRACEME)` in a child made for it, which exits at once:
/// the outcome without ever making the caller a tracee (whose next signal
/// would stop it for a tracer that is not watching).
pub fn ptrace_traceme_in_child() -> Result<(), Errno> {
    fn traceme() -> i32 {
        // SAFETY: PTRACE_TRACEME takes no pointer; it only marks this
        // (short-lived) process as traced by its parent.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if rc == 0 {
            0
        } else {
            Errno::last_raw()
        }
    }
    match in_child(0, traceme)? {
        0 => Ok(()),
        code => Err(Errno::from_raw(code)),
    }
}

/// Fork with legacy `clone(2)` (`SIGCHLD` plus `ns_flags`, namespace flags
/// only), run `child` there and `_exit` with what it returns; reap the child
/// and return its exit code. `child` must be async-signal-safe: it runs in
/// a copy of a possibly multi-threaded process whose locks may be held.
fn in_child(ns_flags: u64, child: fn() -> i32) -> Result<i32, Errno> {
    let flags = (ns_flags & CLONE_NEW_FLAGS) | libc::SIGCHLD as u64;
    // SAFETY: without CLONE_VM (only namespace flags pass the mask above)
    // and with a null stack, clone behaves like fork: the child gets a copy
    // of the address space and continues on its own copy of this stack. The
    // child runs only `child` (async-signal-safe, see above) and `_exit`,
    // which takes no lock, so the other threads of a threaded parent (whose
    // locks may be held in the copy) do not matter.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    let pid = check(rc)?;
    if pid == 0 {
        let code = child();
        // SAFETY: in the child: leave at once, without running any handler
        // or destructor of the copied process state.
        unsafe { libc::_exit(code) }
    }
    let pid = i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?;
    match waitpid(Pid::from_raw(pid), None)? {
        WaitStatus::Exited(_, code) => Ok(code),
        _ => Err(Errno::ECHILD),
    }
}

/// `ioctl(fd, TIOCSTI | high_bits << 32, &b'x')`. On a descriptor that is
/// not a terminal this is `ENOTTY` without a filter. The kernel reads the
/// command as 32 bits, so `high_bits` do not change which ioctl this is;
/// they show whether a filter compares only the low 32 bits too.
pub fn tiocsti(fd: BorrowedFd<'_>, high_bits: u32) -> Result<(), Errno> {
    let byte: u8 = b'x';
    // `Ioctl` is c_ulong on glibc and c_int on musl: the cast is for musl.
    #[allow(clippy::unnecessary_cast)]
    let cmd = (u64::from(high_bits) << 32) | libc::TIOCSTI as u64;
    // SAFETY: the argument points to a live local byte that the kernel only
    // reads; `fd` is a borrowed, open descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            cmd,
            std::ptr::addr_of!(byte),
        )
    };
    check(rc).map(drop)
}

/// `ioctl(fd, TIOCLINUX, &subcode)` with subcode 0 (no such subcode):
/// `ENOTTY` on a descriptor that is not a virtual console.
pub fn tioclinux(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let subcode: u8 = 0;
    // SAFETY: the argument points to a live local byte that the kernel only
    // reads; `fd` is a borrowed, open descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            libc::TIOCLINUX as libc::c_ulong,
            std::ptr::addr_of!(subcode),
        )
    };
    check(rc).map(drop)
}

/// `setxattrat(-1, NULL, 0, NULL, NULL, 0)`, a system call newer than the
/// syscall tables of the seccomp compiler: `EBADF`/`EFAULT`/`EINVAL` without
/// a filter on Linux 6.13+, `ENOSYS` on older kernels.
pub fn setxattrat_invalid() -> Result<(), Errno> {
    // SAFETY: an invalid directory fd and null pointers: the kernel fails
    // before reading or writing anything.
    let rc = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            -1 as libc::c_int,
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_uint,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
        )
    };
    check(rc).map(drop)
}

/// `getpid` through the x32 ABI (number | `0x4000_0000`): the pid where the
/// kernel has x32 enabled, `ENOSYS` where it does not.
#[cfg(target_arch = "x86_64")]
pub fn x32_getpid() -> Result<i64, Errno> {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    // SAFETY: getpid takes no argument and cannot fail or touch memory.
    let rc = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
    check(rc)
}
