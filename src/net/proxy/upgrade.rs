//! WebSocket upgrades through the proxy (plain `ws://` requests and, more
//! often, `wss://` inside intercepted tunnels): the handshake is an
//! ordinary request, checked, counted and rewritten like any other; when
//! the upstream answers 101, both sides are upgraded and their bytes are
//! relayed as they are until either side closes. The exchange is one
//! record (status 101, the bytes of the whole conversation), made when it
//! ends.
//!
//! Only `Upgrade: websocket` is passed on; any other protocol switch (h2c,
//! ...) is dropped with the other hop-by-hop headers, as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{stopped, ActiveGuard, Counted, Pending};
use crate::net::decide::Reason;

/// Whether a request asks to switch to WebSocket (`Connection: upgrade`
/// and `Upgrade: websocket`).
pub(super) fn wants_websocket(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

/// Put back the two headers the hop-by-hop strip removed.
pub(super) fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// After the 101 went back to the client: wait for both upgrades, relay
/// until one side closes (or the proxy stops), then record the exchange.
pub(super) async fn relay(
    guard: ActiveGuard,
    rec: Pending,
    client: OnUpgrade,
    upstream: OnUpgrade,
) {
    let shared = Arc::clone(&guard.0);
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        rec.finish(Some(Reason::UpstreamError), 101, 0, 0);
        return;
    };
    let mut client = Counted::new(TokioIo::new(client), 0);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = stopped(shared.stop.clone()) => {}
    }
    let up = client.up.load(Ordering::Relaxed);
    let down = client.down.load(Ordering::Relaxed);
    rec.finish(None, 101, up, down);
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!wants_websocket(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_websocket(&h));
    }
}
