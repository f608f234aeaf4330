//! Isolation layers applied to the agent: namespaces, user and capabilities,
//! landlock, seccomp. Each module prepares what it can in the supervisor
//! (before the fork) and leaves the child a short, allocation-light step.

pub mod landlock;
pub mod namespaces;
pub mod seccomp;
pub mod user;
