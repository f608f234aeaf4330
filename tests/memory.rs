//! A 100 MB line without a newline in between: recorded without loss while
//! the supervisor's memory stays bounded. Its own test binary, because
//! peak RSS is read from RUSAGE_CHILDREN, which covers every child this
//! process has waited for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn hundred_megabyte_line_with_bounded_memory() {
    if !cgroups_available("hundred_megabyte_line_with_bounded_memory") {
        return;
    }
    let h = Home::new();
    let script = "head -c 100000000 /dev/zero | tr '\\0' a; echo";
    let mut cmd = h.cmd();
    cmd.args(["run", "-q", "--", "sh", "-c", script]);
    let status = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_kib = usage.max_rss();
    eprintln!("peak RSS of the supervisor (or a child): {peak_kib} KiB");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB >= 64 MiB");

    let dir = h.only_session();
    assert_eq!(
        std::fs::metadata(dir.join("stdout.log")).unwrap().len(),
        100_000_001
    );
    let s = h.session_json();
    assert_eq!(s["stdout_lines"], 1);
    assert_eq!(s["stdout_bytes"], 100_000_001u64);
    // 64 KiB pieces: all partial but the last, and together the whole line.
    let raw = std::fs::read(dir.join("events.jsonl")).unwrap();
    let mut pieces = 0u64;
    let mut total = 0u64;
    let mut last_partial = None;
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ev: serde_json::Value = serde_json::from_slice(line).unwrap();
        if ev["type"] == "stdout_line" {
            let text = ev["line"].as_str().unwrap();
            assert!(text.len() <= 65536);
            assert!(text.bytes().all(|b| b == b'a'));
            total += text.len() as u64;
            pieces += 1;
            last_partial = Some(ev["partial"] == true);
        }
    }
    assert_eq!(total, 100_000_000);
    assert_eq!(pieces, 100_000_000u64.div_ceil(65536));
    assert_eq!(last_partial, Some(false));
}
