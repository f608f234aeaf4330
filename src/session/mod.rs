//! Forensic sessions: the on-disk record of one run.
//!
//! Layout (a superset of vallignus 0.4.2's):
//! ```text
//! <home>/sessions/<id>/
//!   session.json   metadata (written at start with status "running", rewritten atomically at the end)
//!   events.jsonl   append-only event stream with seq, t_us and a SHA-256 hash chain (`prev`)
//!   stdout.log     raw stdout bytes
//!   stderr.log     raw stderr bytes
//!   seal.json      Ed25519 signature over the chain's end and the files' hashes (written last)
//! ```
//! Invariants: the session directory and files are created 0700/0600 and
//! owned by the supervisor's user; `session.json` is never half-written
//! (temp file + rename); a session id from the command line is validated
//! before it is joined to any path.

pub mod direct;
pub mod event;
pub mod id;
pub mod meta;
pub mod midstate;
pub mod reader;
pub mod replay;
pub mod seal;
pub mod store;
pub mod verify;
pub mod writer;

pub use event::{Event, Stream};
pub use meta::{SessionMeta, Status};
pub use store::{SessionError, Store};
pub use writer::EventWriter;
