//! Zero-copy relaying of a spliced tunnel (`tls: passthrough`, raw tunnel
//! ports): bytes go socket → pipe → socket with splice(2) and never enter
//! user space, where a buffered copy costs two copies per byte and a
//! wake-up per 64 KiB.
//!
//! Each direction owns a pipe and reads into it while it has room and
//! writes from it while it holds data, both at once, tracking how much it
//! holds (a splice into a full pipe would only return EAGAIN: the
//! calls are non-blocking). A direction ends at end-of-file (the write side of
//! the other socket is then shut down, as a half-close) or an error; the
//! tunnel ends when both have.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's capacity and the most one splice call moves: larger chunks
/// mean fewer wake-ups per byte (the default pipe holds 64 KiB). If the
/// kernel refuses the size (pipe-max-size, per-user pipe limits), the
/// default capacity is used and splice calls simply move less.
const CHUNK: usize = 1024 * 1024;

/// Relay `a` ⇄ `b` until both directions end; `a_to_b` and `b_to_a` count
/// the bytes moved.
pub(super) async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> io::Result<()> {
    let (one, two) = tokio::join!(one_way(a, b, a_to_b), one_way(b, a, b_to_a));
    one.and(two)
}

async fn one_way(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    // Bytes in the pipe; reading and writing overlap while it has both
    // data and room, so neither socket waits for the other's round trip.
    let mut held = 0usize;
    let mut eof = false;
    // The last read found the pipe full (or the socket empty: the two look
    // the same while the pipe holds data): read again only after a write
    // made room. Readiness is cleared only when the pipe was empty, so
    // that data already queued in the socket is never left without a
    // wake-up (edge-triggered readiness would not fire for it again).
    let mut stalled = false;
    loop {
        if eof && held == 0 {
            // End of file and all passed on: pass the half-close on too.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(to),
                nix::sys::socket::Shutdown::Write,
            );
            return Ok(());
        }
        tokio::select! {
            ready = from.readable(), if !eof && !stalled && held < CHUNK => {
                ready?;
                let mut full = false;
                match from.try_io(Interest::READABLE, || {
                    match splice(from, None, &pipe_w, None, CHUNK - held, flags) {
                        Err(nix::errno::Errno::EAGAIN) if held > 0 => {
                            full = true;
                            Ok(0)
                        }
                        other => other.map_err(io::Error::from),
                    }
                }) {
                    Ok(_) if full => stalled = true,
                    Ok(0) => eof = true,
                    Ok(n) => held += n,
                    // The socket had nothing after all (readiness cleared).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            ready = to.writable(), if held > 0 => {
                ready?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(&pipe_r, None, to, None, held, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => {
                        held -= m;
                        stalled = false;
                        count.fetch_add(m as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = libc::c_int::try_from(CHUNK).unwrap_or(libc::c_int::MAX);
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn relays_both_ways_with_half_close_and_counts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // client <-> [a relay b] <-> server
            let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
            let (a, _) = l1.accept().await.unwrap();
            let b = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
            let (mut server, _) = l2.accept().await.unwrap();
            let up = AtomicU64::new(0);
            let down = AtomicU64::new(0);
            let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let relay = relay(&a, &b, &up, &down);
            let peers = async {
                let send = async {
                    client.write_all(&payload).await.unwrap();
                    client.shutdown().await.unwrap();
                    let mut back = Vec::new();
                    client.read_to_end(&mut back).await.unwrap();
                    back
                };
                let echo = async {
                    let mut got = Vec::new();
                    server.read_to_end(&mut got).await.unwrap();
                    server.write_all(b"thanks").await.unwrap();
                    server.shutdown().await.unwrap();
                    got
                };
                tokio::join!(send, echo)
            };
            let (r, (back, got)) = tokio::join!(relay, peers);
            r.unwrap();
            assert_eq!(got, payload);
            assert_eq!(back, b"thanks");
            assert_eq!(up.load(Ordering::Relaxed), payload.len() as u64);
            assert_eq!(down.load(Ordering::Relaxed), 6);
        });
    }
}
