//! A session file written mostly with `O_DIRECT`.
//!
//! Recording writes about four bytes to the session files for every byte
//! of output (`events.jsonl` is ~3x the output, plus the raw log). Through
//! the page cache every byte is copied into a freshly allocated page cache
//! folio; on these VMs that costs more CPU than hashing the same bytes
//! (`dd` of 1.5 GB: 2.1-4.6 s of system time buffered, 0.25 s with
//! `oflag=direct`, in 1.2-1.3 s of wall time either way), and the
//! supervisor shares two cores with the agent. So whole aligned blocks go
//! to the file with `O_DIRECT`, straight from an aligned buffer.
//!
//! Invariants:
//! - The file's content is exactly the bytes written, in order: blocks are
//!   written at their own offsets (`pwrite`), a multiple of [`BLOCK`] at a
//!   time, and what does not fill a block waits in the buffer.
//! - [`Write::flush`] writes the waiting tail too, through the page cache
//!   (a second, ordinary descriptor of the same file), so readers of a
//!   running session see every line written so far; the tail is written
//!   again, with `O_DIRECT`, once its block is full (the kernel writes back
//!   and drops the cached page first, so both paths agree).
//! - Where `O_DIRECT` is not available (a file system without it, such as
//!   tmpfs on older kernels, or a write refused with `EINVAL`), everything
//!   goes through the ordinary descriptor: slower, never wrong.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Alignment of `O_DIRECT` offsets, lengths and buffers (the largest
/// logical block size in common use).
pub const BLOCK: usize = 4096;
/// How much is gathered before it is written (a multiple of [`BLOCK`]).
const WINDOW: usize = 1 << 20;

/// A [`WINDOW`]-byte buffer aligned to [`BLOCK`] (inside a larger `Vec`).
struct Window {
    buf: Vec<u8>,
    start: usize,
}

impl Window {
    fn new() -> Self {
        let buf = vec![0u8; WINDOW + BLOCK];
        let start = (BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK;
        Self { buf, start }
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.buf[self.start..self.start + len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + WINDOW]
    }
}

/// Blocks to write: a window, how many of its bytes, where in the file.
struct Job {
    window: Window,
    len: usize,
    offset: u64,
}

/// The descriptors: `O_DIRECT` (while it works) and the ordinary one.
struct Files {
    plain: File,
    direct: Option<File>,
}

impl Files {
    /// Write whole blocks at `offset`: with `O_DIRECT`, or, refused
    /// (`EINVAL`) or unavailable, through the page cache from then on.
    fn write_blocks(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            match direct.write_all_at(bytes, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.plain.write_all_at(bytes, offset)
    }
}

/// The thread that writes full windows while the next one fills: the
/// device's time overlaps the caller's work (hashing, encoding). At most
/// one window is in flight; it comes back (empty) for reuse.
struct Writer {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<io::Result<Window>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct DirectFile {
    files: Arc<std::sync::Mutex<Files>>,
    /// The window being filled.
    window: Window,
    /// Bytes waiting in it.
    len: usize,
    /// File offset of its first byte (a multiple of [`BLOCK`]).
    offset: u64,
    /// A window written out and back for reuse.
    spare: Option<Window>,
    writer: Option<Writer>,
}

impl DirectFile {
    /// Write `plain` (an empty file just created at `path`) through an
    /// `O_DIRECT` descriptor of `path` where possible.
    pub fn new(plain: File, path: &Path) -> Self {
        let empty = plain.metadata().is_ok_and(|m| m.len() == 0);
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .ok()
            .filter(|_| empty);
        Self {
            files: Arc::new(std::sync::Mutex::new(Files { plain, direct })),
            window: Window::new(),
            len: 0,
            offset: 0,
            spare: None,
            writer: None,
        }
    }

    /// Wait for the window in flight, if any, and keep it for reuse.
    fn settle(&mut self) -> io::Result<()> {
        let Some(w) = self.writer.as_mut().filter(|w| w.in_flight) else {
            return Ok(());
        };
        w.in_flight = false;
        match w.done.recv() {
            Ok(result) => {
                self.spare = Some(result?);
                Ok(())
            }
            Err(_) => Err(io::Error::other("the session file writer thread stopped")),
        }
    }

    /// The window's whole blocks as a job, the rest moved to a fresh
    /// window (the spare one once the window in flight is back); `None`
    /// when not one block is full.
    fn take_blocks(&mut self) -> io::Result<Option<Job>> {
        let n = self.len / BLOCK * BLOCK;
        if n == 0 {
            return Ok(None);
        }
        self.settle()?;
        let fresh = self.spare.take().unwrap_or_else(Window::new);
        let full = std::mem::replace(&mut self.window, fresh);
        let rest = self.len - n;
        self.window.bytes_mut()[..rest].copy_from_slice(&full.bytes(self.len)[n..]);
        let job = Job {
            window: full,
            len: n,
            offset: self.offset,
        };
        self.len = rest;
        self.offset += n as u64;
        Ok(Some(job))
    }

    /// Hand the window's whole blocks to the writer thread (started on
    /// first use) and go on with the rest.
    fn send_blocks(&mut self) -> io::Result<()> {
        let Some(job) = self.take_blocks()? else {
            return Ok(());
        };
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(spawn_writer(Arc::clone(&self.files))?),
        };
        match writer.jobs.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => {
                writer.in_flight = true;
                Ok(())
            }
            _ => Err(io::Error::other("the session file writer thread stopped")),
        }
    }
}

fn spawn_writer(files: Arc<std::sync::Mutex<Files>>) -> io::Result<Writer> {
    let (jobs, rx) = sync_channel::<Job>(1);
    let (done_tx, done) = sync_channel::<io::Result<Window>>(1);
    let thread = std::thread::Builder::new()
        .name("session-io".into())
        .spawn(move || {
            for job in rx {
                let result = match files.lock() {
                    Ok(mut f) => f
                        .write_blocks(job.window.bytes(job.len), job.offset)
                        .map(|()| job.window),
                    Err(_) => Err(io::Error::other("session file lock poisoned")),
                };
                if done_tx.send(result).is_err() {
                    break;
                }
            }
        })?;
    Ok(Writer {
        jobs: Some(jobs),
        done,
        in_flight: false,
        thread: Some(thread),
    })
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (WINDOW - self.len).min(rest.len());
            self.window.bytes_mut()[self.len..self.len + take].copy_from_slice(&rest[..take]);
            self.len += take;
            rest = &rest[take..];
            if self.len == WINDOW {
                self.send_blocks()?;
            }
        }
        Ok(data.len())
    }

    /// Everything written so far reaches the file: the blocks in flight
    /// are waited for, the whole blocks waiting are written, and the
    /// partial last block goes through the page cache.
    fn flush(&mut self) -> io::Result<()> {
        // Written here, not by the thread: a run with little output never
        // starts one.
        let job = self.take_blocks()?;
        self.settle()?;
        let mut files = self
            .files
            .lock()
            .map_err(|_| io::Error::other("session file lock poisoned"))?;
        if let Some(job) = job {
            files.write_blocks(job.window.bytes(job.len), job.offset)?;
            self.spare = Some(job.window);
        }
        if self.len > 0 {
            files
                .plain
                .write_all_at(self.window.bytes(self.len), self.offset)?;
        }
        Ok(())
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        if let Some(mut w) = self.writer.take() {
            drop(w.jobs.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
            .collect()
    }

    /// Odd-sized writes, flushes in between (readers see everything each
    /// time), the tail written twice: the file is exactly the bytes.
    #[test]
    fn the_file_holds_exactly_what_was_written() {
        // /var/tmp: a disk file system (tmpfs may not take O_DIRECT).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        let mut f = DirectFile::new(File::create(&path).unwrap(), &path);
        let mut want = Vec::new();
        for (i, size) in [1, 4095, 4097, 100_000, 1 << 20, 3, (1 << 20) + 5, 7]
            .into_iter()
            .enumerate()
        {
            let chunk = pattern(size, i as u32);
            f.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
            if i % 2 == 1 {
                f.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), want, "after write {i}");
            }
        }
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn without_o_direct_it_writes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = DirectFile::new(File::create(&path).unwrap(), &path);
        f.files.lock().unwrap().direct = None;
        let data = pattern((1 << 20) * 2 + 123, 9);
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
