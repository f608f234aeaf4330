//! vallignus: a Linux-native runtime for untrusted AI agents.
//!
//! Map of the crate (see DESIGN.md for the whole picture):
//! - [`auth`]: agents, versioned policies, signing keys, signed tokens.
//! - [`cli`]: argument parsing and the verbs (`run`, `sessions`, `replay`).
//! - [`policy`]: the validated limits of a run, from flags.
//! - [`supervisor`]: spawning the agent, watching it, tearing it down.
//! - [`cgroup`]: the per-run cgroup v2.
//! - [`net`]: the policy proxy and its pure decisions.
//! - [`session`]: the forensic record (session.json, events.jsonl, logs).
//! - [`sys`]: the only module with `unsafe`.

pub mod auth;
pub mod cgroup;
pub mod cli;
pub mod isolation;
pub mod net;
pub mod policy;
pub mod session;
pub mod supervisor;
pub mod sys;
pub mod textfile;
