//! The agent's network path (DESIGN.md, "Network path", with one change:
//! the proxy listens inside the agent's namespace instead of at the far
//! end of a veth pair; `netns` says why).
//!
//! - [`decide`]: pure policy decisions for the proxy (domain rules, ports,
//!   address vetting, Host/SNI agreement, TLS ClientHello parsing). No I/O.
//! - [`proxy`]: the policy proxy itself (tokio + hyper), which applies
//!   [`decide`] to every request and tunnel and records each one.
//! - [`tls`]: the run's interception CA, leaves, upstream verification.
//! - [`spend`]: pricing and the budget ledger (pure); [`credentials`]:
//!   placeholders and the header rewrite (pure).
//! - [`netns`]: the agent's network namespace (loopback only), its nft rules
//!   and the proxy's listening socket inside it.
//!
//! Invariant: the proxy never dials an address that [`decide`] did not vet.

pub mod credentials;
pub mod decide;
pub mod netns;
pub mod proxy;
pub mod spend;
pub mod tls;
