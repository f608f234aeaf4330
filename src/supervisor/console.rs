//! Forwarding the agent's output to vallignus's own stdout/stderr.
//!
//! A dedicated thread does the writing, fed through a bounded queue, so a
//! terminal or pipe that stops reading can never stall the supervisor's
//! loop (and with it the deadline): when the queue is full the loop stops
//! reading the agent's pipes, which blocks the agent, and keeps watching.
//! One queue for both streams keeps their interleaving on the terminal.
//!
//! If our stdout (or stderr) is closed by the reader (`vallignus run ... |
//! head`), that stream is marked closed; the supervisor then closes the
//! agent's pipe so the agent sees EPIPE/SIGPIPE, as it would in a shell
//! pipeline.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::session::Stream;

/// Chunks queued for the terminal before the supervisor applies backpressure.
const QUEUE_CHUNKS: usize = 64;

pub struct Console {
    tx: Option<SyncSender<(Stream, Vec<u8>)>>,
    closed: Arc<[AtomicBool; 2]>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// Start the writer thread. Must be called after the child was forked
    /// (fork requires a single-threaded supervisor).
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<(Stream, Vec<u8>)>(QUEUE_CHUNKS);
        let closed: Arc<[AtomicBool; 2]> =
            Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let flags = Arc::clone(&closed);
        // Our own duplicates of fds 1 and 2: unbuffered, and free of the
        // locks behind std's stdout()/stderr(), which the supervisor's own
        // messages take.
        let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        let mut err = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned()?);
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                for (stream, chunk) in rx {
                    if flags[stream.index()].load(Ordering::Relaxed) {
                        continue;
                    }
                    let sink: &mut dyn Write = match stream {
                        Stream::Stdout => &mut out,
                        Stream::Stderr => &mut err,
                    };
                    if sink.write_all(&chunk).is_err() {
                        flags[stream.index()].store(true, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            closed,
            thread: Some(thread),
        })
    }

    /// Queue a chunk. Gives it back when the queue is full.
    pub fn try_send(&self, stream: Stream, chunk: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(tx) = &self.tx else { return Ok(()) };
        match tx.try_send((stream, chunk)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, chunk))) => Err(chunk),
            // The thread is gone (cannot write anywhere): drop the output.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Whether the reader of our stdout/stderr went away.
    pub fn is_closed(&self, stream: Stream) -> bool {
        self.closed[stream.index()].load(Ordering::Relaxed)
    }

    /// Write out everything queued and stop the thread.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.finish();
    }
}
