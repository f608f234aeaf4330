#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::collections::HashSet;

const OWNER: Owner = Owner {
    pid: 4242,
    start_time: 987_654,
};

#[test]
fn plan_is_deterministic_and_in_range() {
    let a = plan("20250101-120000-abc123", 0);
    assert_eq!(a, plan("20250101-120000-abc123", 0));
    assert!(prefixes_overlap(
        a.subnet,
        SUBNET_PREFIX,
        RANGE,
        RANGE_PREFIX
    ));
    assert_eq!(u32::from(a.subnet) % 4, 0);
    assert_eq!(u32::from(a.host_addr), u32::from(a.subnet) + 1);
    assert_eq!(u32::from(a.agent_addr), u32::from(a.subnet) + 2);
    assert_eq!(u32::from(a.broadcast), u32::from(a.subnet) + 3);
    assert_eq!(a.proxy_port, DEFAULT_PROXY_PORT);
    assert_eq!(
        a.proxy_addr(),
        SocketAddrV4::new(a.host_addr, DEFAULT_PROXY_PORT)
    );
    assert_eq!(
        a.proxy_url(),
        format!("http://{}:{}", a.host_addr, DEFAULT_PROXY_PORT)
    );
}

#[test]
fn names_fit_ifnamsiz_and_follow_the_slot() {
    for (i, id) in ["a", "20250101-120000-zzzzzz", "x".repeat(500).as_str()]
        .iter()
        .enumerate()
    {
        let p = plan(id, i as u32);
        assert!(p.host_if.len() <= 15 && p.agent_if.len() <= 15, "{p:?}");
        assert_eq!(p.host_if, format!("vlg{:04x}h", p.slot));
        assert_eq!(p.agent_if, format!("vlg{:04x}a", p.slot));
        assert!(is_host_if_name(&p.host_if));
        assert!(!is_host_if_name(&p.agent_if));
    }
}

#[test]
fn next_index_is_next_slot_and_wraps() {
    let p0 = plan("run", 0);
    let p1 = plan("run", 1);
    assert_eq!((p0.slot as u32 + 1) % SLOTS, p1.slot as u32);
    let far = plan("run", SLOTS);
    assert_eq!(far.slot, p0.slot);
    let last = plan_slot("r", (SLOTS - 1) as u16);
    assert_eq!(last.broadcast, Ipv4Addr::new(10, 213, 255, 255));
    assert_eq!(plan_slot("r", 0).host_addr, Ipv4Addr::new(10, 213, 0, 1));
}

#[test]
fn slots_never_share_addresses_or_names() {
    let mut seen_addrs = HashSet::new();
    let mut seen_names = HashSet::new();
    for slot in 0..SLOTS as u16 {
        let p = plan_slot("r", slot);
        for a in [p.subnet, p.host_addr, p.agent_addr, p.broadcast] {
            assert!(seen_addrs.insert(a), "{a} twice");
        }
        assert!(seen_names.insert(p.host_if.clone()));
    }
}

#[test]
fn different_runs_spread_over_slots() {
    let slots: HashSet<u16> = (0..200)
        .map(|i| plan(&format!("20250101-120000-{i:06}"), 0).slot)
        .collect();
    assert!(slots.len() > 190, "too many collisions: {}", slots.len());
}

#[test]
fn overlap_of_prefixes() {
    let net = Ipv4Addr::new(10, 213, 1, 4);
    assert!(prefixes_overlap(net, 30, Ipv4Addr::new(10, 213, 1, 6), 30));
    assert!(prefixes_overlap(net, 30, Ipv4Addr::new(10, 0, 0, 1), 8));
    assert!(prefixes_overlap(net, 30, Ipv4Addr::new(0, 0, 0, 0), 0));
    assert!(!prefixes_overlap(net, 30, Ipv4Addr::new(10, 213, 1, 8), 30));
    assert!(!prefixes_overlap(net, 30, Ipv4Addr::new(192, 0, 2, 2), 24));
    assert!(prefixes_overlap(net, 30, Ipv4Addr::new(10, 213, 1, 5), 32));
    assert!(!prefixes_overlap(net, 30, Ipv4Addr::new(10, 213, 1, 3), 32));
}

#[test]
fn labels_round_trip_and_are_sanitized() {
    let label = owner_label("20250101-120000-abc123", OWNER);
    assert_eq!(
        label,
        "vallignus run=20250101-120000-abc123 owner=4242:987654"
    );
    assert_eq!(parse_owner_label(&label), Some(OWNER));
    let evil = owner_label("x\" ; flush ruleset owner=1:2\n", OWNER);
    assert!(!evil.contains('"') && !evil.contains('\n') && !evil.contains(';'));
    assert_eq!(parse_owner_label(&evil), Some(OWNER));
    assert_eq!(parse_owner_label("something else"), None);
    assert_eq!(parse_owner_label("vallignus run=x owner=a:1"), None);
    assert_eq!(sanitize_label(&"é".repeat(100)).len(), 64);
}

#[test]
fn table_names_round_trip() {
    let name = host_table_name(0x0abc, OWNER, "run");
    assert!(name.starts_with("vallignus_0abc_4242_987654_"));
    assert_eq!(parse_host_table_name(&name), Some((0x0abc, OWNER)));
    assert_ne!(name, host_table_name(0x0abc, OWNER, "other run"));
    assert_eq!(parse_host_table_name("vallignus"), None);
    assert_eq!(parse_host_table_name("vallignus_0abc_1_2"), None);
    assert_eq!(parse_host_table_name("vallignus_0abc_1_2_zzzzzzzz"), None);
    assert_eq!(parse_host_table_name("filter"), None);
}

#[test]
fn host_ruleset_admits_only_the_proxy() {
    let p = plan_slot("run", 5);
    let rules = p.host_ruleset(OWNER);
    let table = host_table_name(5, OWNER, "run");
    assert!(rules.starts_with(&format!(
        "add table inet {table}\nflush table inet {table}\ntable inet {table} {{"
    )));
    assert!(rules.contains("iifname \"vlg0005h\" ip daddr 10.213.0.21 tcp dport 61213 accept"));
    assert!(rules.contains("iifname \"vlg0005h\" ip saddr != 10.213.0.22 drop"));
    assert!(rules.contains("iifname \"vlg0005h\" meta nfproto != ipv4 drop"));
    assert!(rules.contains("iifname \"vlg0005h\" meta l4proto tcp reject with tcp reset"));
    assert!(rules.contains("iifname \"vlg0005h\" reject with icmpx port-unreachable"));
    assert!(rules.contains("oifname \"vlg0005h\" reject"));
    // The gate is before routing.
    assert!(rules.contains("type filter hook prerouting priority raw; policy accept;"));
    assert_eq!(rules.matches(" accept\n").count(), 1, "{rules}");
    assert!(rules.contains("comment \"vallignus run=run owner=4242:987654\""));
}

#[test]
fn agent_ruleset_rejects_all_but_the_proxy() {
    let p = plan_slot("run", 5);
    let rules = p.agent_ruleset();
    assert!(rules.starts_with("add table inet vallignus\nflush table inet vallignus\n"));
    assert!(rules.contains("oifname \"vlg0005a\" ip daddr 10.213.0.21 tcp dport 61213 accept"));
    assert!(rules.contains("policy drop"));
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
