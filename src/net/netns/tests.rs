#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn the_proxy_is_on_the_agents_loopback() {
    assert_eq!(PROXY_ADDR.to_string(), "127.0.0.1:61213");
}

#[test]
fn agent_ruleset_rejects_everything_but_loopback() {
    let rules = agent_ruleset();
    assert!(rules.starts_with("add table inet vallignus\nflush table inet vallignus\n"));
    // Two chains, both dropping by default; loopback and replies are the
    // only accepted traffic.
    assert_eq!(rules.matches("policy drop;").count(), 2, "{rules}");
    assert_eq!(rules.matches(" accept\n").count(), 4, "{rules}");
    assert!(rules.contains("oifname \"lo\" accept"));
    assert!(rules.contains("iifname \"lo\" accept"));
    assert!(rules.contains("meta l4proto tcp reject with tcp reset"));
    assert!(rules.contains("reject with icmpx port-unreachable"));
    assert!(!rules.contains("udp dport 53 accept"));
}

#[test]
fn missing_nft_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let empty = tempfile::tempdir().unwrap();
    let err = nft::locate_in(&[empty.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, NetError::ToolMissing { tool: "nft", .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`nft` not found") && msg.contains("nftables"),
        "{msg}"
    );
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");

    // A non-executable file is not a tool; an executable one is.
    let fake = empty.path().join("nft");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(nft::locate_in(&[empty.path().to_path_buf()]).is_err());
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(nft::locate_in(&[empty.path().to_path_buf()]).unwrap(), fake);
}
