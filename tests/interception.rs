//! TLS interception and LLM spend budgets, end to end: real clients (curl,
//! the `openai` SDK) inside the sandbox talk HTTPS through the policy proxy
//! to tests/fixtures/fake_llm.py, which serves a certificate from a CA this
//! test makes with the `openssl` CLI. Root (tier 2). Every target is on this
//! machine: the fake server listens on 127.0.0.1 and the proxy reaches it
//! through `--resolve`. A missing tool (openssl, curl, python3, the openai
//! module) skips with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::clients::*;
use common::fake_llm::*;
use common::*;

/// Pico-dollars (10⁻¹² USD) per token of gpt-4o-mini in the shipped table
/// (USD 0.15 / 0.60 per million tokens).
const MINI_INPUT: u64 = 150_000;
const MINI_OUTPUT: u64 = 600_000;
/// What the fake server reports when not told otherwise.
const FAKE_INPUT_TOKENS: u64 = 1000;
const FAKE_OUTPUT_TOKENS: u64 = 500;
/// 1000 × 0.15 + 500 × 0.60 USD per million tokens.
const MINI_COST: u64 = FAKE_INPUT_TOKENS * MINI_INPUT + FAKE_OUTPUT_TOKENS * MINI_OUTPUT;

fn usd(pico: u64) -> f64 {
    pico as f64 / 1e12
}

/// `v` is a number equal to `want_pico` pico-dollars.
fn assert_usd(v: &Value, want_pico: u64, what: &str) {
    let got = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(
        (got - usd(want_pico)).abs() < 1e-12,
        "{what}: {got} USD, expected {} USD",
        usd(want_pico)
    );
}

/// The proxy's reservation for a request body: `max_tokens` × output price
/// + ceil(body bytes / 4) × the dearest input price.
fn estimate(body: &str, max_tokens: u64, output: u64, max_input: u64) -> u64 {
    max_tokens * output + (body.len() as u64).div_ceil(4) * max_input
}

/// A model's prices (pico-dollars per token) read from the shipped table:
/// (input, cache_write, output).
fn shipped_price(pattern: &str) -> (u64, u64, u64) {
    let table =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("prices/default.yaml"))
            .unwrap();
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pattern}:")))
        .unwrap_or_else(|| panic!("{pattern} is not in prices/default.yaml"));
    let field = |key: &str| -> u64 {
        let start = line
            .find(&format!(" {key}: \""))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            + key.len()
            + 4;
        let text = &line[start..start + line[start..].find('"').unwrap()];
        // USD per million tokens, up to 6 decimals = pico-dollars per token.
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        whole.parse::<u64>().unwrap() * 1_000_000 + format!("{frac:0<6}").parse::<u64>().unwrap()
    };
    let input = field("input");
    let cache_write = if line.contains(" cache_write: \"") {
        field("cache_write")
    } else {
        input
    };
    (input, cache_write, field("output"))
}

const GPT_BODY: &str =
    r#"{"model":"gpt-4o-mini","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;

/// POSTs `$2` (JSON) to `$1` with the extra header `$3` (may be empty) and
/// prints `<name> <curl exit>:<status> <body>`; `$4` is the name.
const POST: &str = r#"
out=$(curl -sS -w ' %{http_code}' -H 'content-type: application/json' ${3:+-H "$3"} -d "$2" "$1")
echo "$4 $?:${out##* } ${out% *}"
"#;

#[test]
fn curl_requests_inside_one_intercepted_tunnel() {
    let test = "curl_requests_inside_one_intercepted_tunnel";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let script = r#"
for v in SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS PIP_CERT; do
  echo "var $v=$(cat /proc/self/environ | tr '\0' '\n' | sed -n "s/^$v=//p")"
done
echo "certs $(grep -c 'BEGIN CERTIFICATE' "$SSL_CERT_FILE")"
curl -sS -w ' %{http_code}\n' "$1" "$2"
"#;
    let o = run(
        &h,
        &fake.flags(&["api.openai.test"], true),
        &[
            "sh",
            "-c",
            script,
            "sh",
            &fake.url("api.openai.test", "/health"),
            &fake.url("api.openai.test", "/v1/nope?x=1"),
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let bundle = format!("/run/vallignus/tls/{}.pem", h.only_session_id());
    for v in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "NODE_EXTRA_CA_CERTS",
        "PIP_CERT",
    ] {
        assert_eq!(
            line(&out, &format!("var {v}=")),
            format!("var {v}={bundle}"),
            "{out}"
        );
    }
    let certs: u32 = line(&out, "certs ")[6..].parse().unwrap();
    assert!(certs >= 1, "{out}");
    assert!(out.contains(r#"{"ok": true} 200"#), "first request: {out}");
    assert!(out.contains("unknown path /v1/nope"), "{out}");
    assert!(!Path::new(&bundle).exists(), "{bundle} outlived the run");

    let up = fake.log();
    assert_eq!(up.len(), 2, "{up:?}");
    assert_eq!(up[1]["path"], "/v1/nope?x=1");

    let (reqs, tunnels) = split(&h);
    assert_eq!(tunnels.len(), 1, "one tunnel for both URLs: {tunnels:?}");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let t = &tunnels[0];
    assert_eq!(t["tls"], "intercepted", "{t}");
    assert_eq!(t["decision"], "allow", "{t}");
    assert_eq!(t["status"], 200, "{t}");
    assert_eq!(t["sni"], "api.openai.test", "{t}");
    assert_eq!(t["port"], fake.port, "{t}");
    assert!(t["reason"].is_null(), "{t}");
    assert!(t["bytes_up"].as_u64().unwrap() > 0, "{t}");
    for (r, path, status) in [(&reqs[0], "/health", 200), (&reqs[1], "/v1/nope", 404)] {
        assert_eq!(r["tls"], "intercepted", "{r}");
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["host"], "api.openai.test", "{r}");
        assert_eq!(r["port"], fake.port, "{r}");
        assert_eq!(r["path"], path, "no query in the record: {r}");
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert!(r["reason"].is_null(), "{r}");
        assert_eq!(r["rule"], "api.openai.test", "{r}");
        assert_eq!(r["sni"], "api.openai.test", "{r}");
        assert!(r.get("cost_usd").is_none(), "not metered: {r}");
    }
    assert_eq!(reqs[0]["bytes_down"], r#"{"ok": true}"#.len());
}

#[test]
fn domain_fronting_inside_a_tunnel_is_denied() {
    let test = "domain_fronting_inside_a_tunnel_is_denied";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let url = fake.url("api.openai.test", "/health");
    // Same connection (curl keeps it across --next): a fronted request,
    // then an honest one.
    let o = run(
        &h,
        &fake.flags(&["api.openai.test"], true),
        &[
            "curl",
            "-sS",
            "-w",
            " %{http_code} %{num_connects}\n",
            "-H",
            "Host: evil.example.test",
            &url,
            "--next",
            "-sS",
            "-w",
            " %{http_code} %{num_connects}\n",
            &url,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (body, rest) = lines[0].rsplit_once(" 403 ").expect(&out);
    assert_eq!(rest, "1", "{out}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "domain_fronting", "{out}");
    assert!(body["host"].is_string(), "{out}");
    assert_eq!(lines[1], r#"{"ok": true} 200 0"#, "reused tunnel: {out}");

    let up = fake.log();
    assert_eq!(up.len(), 1, "only the honest request went up: {up:?}");
    assert_eq!(
        up[0]["headers"]["host"],
        format!("api.openai.test:{}", fake.port)
    );
    let (reqs, tunnels) = split(&h);
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["decision"], "deny", "{}", reqs[0]);
    assert_eq!(reqs[0]["reason"], "domain_fronting", "{}", reqs[0]);
    assert_eq!(reqs[0]["status"], 403, "{}", reqs[0]);
    assert_eq!(reqs[0]["tls"], "intercepted", "{}", reqs[0]);
    assert_eq!(reqs[1]["decision"], "allow", "{}", reqs[1]);
    assert_eq!(reqs[1]["status"], 200, "{}", reqs[1]);
}

#[test]
fn max_requests_counts_requests_inside_tunnels() {
    let test = "max_requests_counts_requests_inside_tunnels";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let url = fake.url("api.openai.test", "/health");
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-requests", "2"]);
    let t0 = Instant::now();
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            "curl -sS -w ' %{http_code}\\n' \"$1\" \"$1\" \"$1\"; sleep 20; echo survived",
            "sh",
            &url,
        ],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let out = stdout(&o);
    assert!(!out.contains("survived"), "{out}");
    // (curl's own output may be cut short: the run ends under it.)
    assert_eq!(fake.log().len(), 2);

    let (reqs, tunnels) = split(&h);
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[0]["status"], 200);
    assert_eq!(reqs[1]["status"], 200);
    assert_eq!(reqs[2]["status"], 429, "{}", reqs[2]);
    assert_eq!(reqs[2]["reason"], "max_requests", "{}", reqs[2]);
    assert_eq!(reqs[2]["decision"], "deny", "{}", reqs[2]);
    assert_eq!(reqs[2]["tls"], "intercepted", "{}", reqs[2]);
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "max_requests", "{s}");
    assert_eq!(s["vallignus_exit_code"], 124, "{s}");
}

#[test]
fn untrusted_client_and_untrusted_upstream() {
    let test = "untrusted_client_and_untrusted_upstream";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let url = fake.url("api.openai.test", "/health");

    // The agent trusts only the test CA, not the run's: its handshake with
    // the proxy fails and nothing goes up.
    let h = Home::new();
    let ca = fake.ca_str();
    let o = run(
        &h,
        &fake.flags(&["api.openai.test"], true),
        &["curl", "-sS", "--cacert", &ca, &url],
    );
    assert_eq!(
        code(&o),
        60,
        "curl: peer certificate cannot be verified\n{}",
        stderr(&o)
    );
    assert!(fake.log().is_empty());
    let (reqs, tunnels) = split(&h);
    assert!(reqs.is_empty(), "{reqs:?}");
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    let t = &tunnels[0];
    assert_eq!(t["reason"], "client_tls", "{t}");
    assert_eq!(t["decision"], "deny", "{t}");
    assert_eq!(t["tls"], "intercepted", "{t}");

    // The proxy does not trust the fake server's CA (no --upstream-ca).
    let h = Home::new();
    let o = run(
        &h,
        &fake.flags(&["api.openai.test"], false),
        &["curl", "-sS", "-w", " %{http_code}", &url],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let (body, status) = out.rsplit_once(' ').unwrap();
    assert_eq!(status, "502", "{out}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "upstream_tls", "{out}");
    assert!(fake.log().is_empty(), "no request completed upstream");
    let (reqs, tunnels) = split(&h);
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["reason"], "upstream_tls", "{}", reqs[0]);
    assert_eq!(reqs[0]["status"], 502, "{}", reqs[0]);
    assert_eq!(reqs[0]["tls"], "intercepted", "{}", reqs[0]);
}

#[test]
fn spend_of_plain_openai_requests_via_curl() {
    let test = "spend_of_plain_openai_requests_via_curl";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", "1"]);
    let responses_body = r#"{"model":"gpt-4o-mini","max_output_tokens":1000,"input":"hi"}"#;
    let script = format!("{POST}\nset -- \"$5\" \"$6\" '' responses\n{POST}",);
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            &script,
            "sh",
            &fake.url("api.openai.test", "/v1/chat/completions"),
            GPT_BODY,
            "",
            "chat",
            &fake.url("api.openai.test", "/v1/responses"),
            responses_body,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(line(&out, "chat ").starts_with("chat 0:200 "), "{out}");
    assert!(
        line(&out, "responses ").starts_with("responses 0:200 "),
        "{out}"
    );
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for (i, (r, path)) in reqs
        .iter()
        .zip(["/v1/chat/completions", "/v1/responses"])
        .enumerate()
    {
        assert_eq!(r["path"], path, "{r}");
        assert_eq!(r["method"], "POST", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["model"], "gpt-4o-mini", "{r}");
        assert_usd(&r["cost_usd"], MINI_COST, "cost_usd");
        assert_usd(&r["spend_usd"], MINI_COST * (i as u64 + 1), "spend_usd");
    }
    let s = h.session_json();
    assert_usd(&s["spend_usd"], 2 * MINI_COST, "session spend_usd");
    assert!(s["termination_reason"].is_null(), "{s}");
    let show = h.run(&["sessions", "show", s["session_id"].as_str().unwrap()]);
    assert!(stdout(&show).contains("Spend"), "{}", stdout(&show));
    assert!(stdout(&show).contains("$0.0009"), "{}", stdout(&show));
}

const SDK_SCRIPT: &str = r#"
import importlib.util, os, sys
import openai
from openai import OpenAI

def client(http_client=None):
    extra = {} if http_client is None else {"http_client": http_client}
    return OpenAI(api_key="sk-vallignus-test", base_url=sys.argv[1], max_retries=0, timeout=20, **extra)

msgs = [{"role": "user", "content": "hi"}]
c = client()
try:
    r = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)
except openai.APIConnectionError:
    # This SDK's HTTP client ignores SSL_CERT_FILE: hand it the bundle.
    name = next(m for m in ("httpx", "httpx2") if importlib.util.find_spec(m))
    httpx = importlib.import_module(name)
    print("explicit-ca", name)
    c = client(httpx.Client(verify=os.environ["SSL_CERT_FILE"]))
    r = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)
print("plain", r.choices[0].message.content)
text = ""
for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
print("stream", text)
"#;

#[test]
fn spend_with_the_openai_sdk_plain_and_streaming() {
    let test = "spend_with_the_openai_sdk_plain_and_streaming";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let python = match python_with(&["openai"]) {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", "1"]);
    let o = run(
        &h,
        &flags,
        &[
            python.to_str().unwrap(),
            "-c",
            SDK_SCRIPT,
            &fake.url("api.openai.test", "/v1"),
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(line(&out, "plain "), "plain hello from fake", "{out}");
    assert_eq!(line(&out, "stream "), "stream hello from fake", "{out}");

    let up: Vec<Value> = fake
        .log()
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up[0]["body"].get("stream_options").is_none(), "{}", up[0]);
    assert_eq!(up[1]["body"]["stream"], true, "{}", up[1]);
    assert_eq!(
        up[1]["body"]["stream_options"]["include_usage"], true,
        "the proxy asks for the stream's usage: {}",
        up[1]
    );

    let posts: Vec<Value> = split(&h)
        .0
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    for r in &posts {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["model"], "gpt-4o-mini", "{r}");
        assert_usd(&r["cost_usd"], MINI_COST, "cost_usd");
    }
    assert_usd(&h.session_json()["spend_usd"], 2 * MINI_COST, "spend_usd");
}

#[test]
fn spend_of_anthropic_messages_plain_and_streaming() {
    let test = "spend_of_anthropic_messages_plain_and_streaming";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let (input, _, output) = shipped_price("claude-haiku-4-5*");
    let cost = FAKE_INPUT_TOKENS * input + FAKE_OUTPUT_TOKENS * output;
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.anthropic.test"], &["--max-spend-usd", "1"]);
    let plain = r#"{"model":"claude-haiku-4-5","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"claude-haiku-4-5","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let url = fake.url("api.anthropic.test", "/v1/messages");
    let script = format!("{POST}\nset -- \"$1\" \"$5\" \"$3\" stream\n{POST}");
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            &script,
            "sh",
            &url,
            plain,
            "anthropic-version: 2023-06-01",
            "plain",
            stream,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(line(&out, "plain ").starts_with("plain 0:200 "), "{out}");
    assert!(line(&out, "stream ").starts_with("stream 0:200 "), "{out}");
    assert!(out.contains("message_stop"), "{out}");

    let up = fake.log();
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(
        up[1]["body"].get("stream_options").is_none(),
        "Anthropic bodies go up as sent: {}",
        up[1]
    );
    assert_eq!(up[1]["raw_len"], stream.len(), "{}", up[1]);
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r["path"], "/v1/messages", "{r}");
        assert_eq!(r["host"], "api.anthropic.test", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["model"], "claude-haiku-4-5", "{r}");
        assert_usd(&r["cost_usd"], cost, "cost_usd");
        assert_usd(&r["spend_usd"], cost * (i as u64 + 1), "spend_usd");
    }
    assert_usd(&h.session_json()["spend_usd"], 2 * cost, "spend_usd");
}

#[test]
fn no_usage_and_dropped_streams_are_charged_their_reservation() {
    let test = "no_usage_and_dropped_streams_are_charged_their_reservation";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", "1"]);
    let stream = r#"{"model":"gpt-4o-mini","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let unknown =
        r#"{"model":"no-such-model","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let script = format!(
        "u=$1 s=$5 k=$6\n{POST}\nset -- \"$u\" \"$s\" 'x-fake-mode: drop' drop\n{POST}\nset -- \"$u\" \"$k\" '' unknown\n{POST}"
    );
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            &script,
            "sh",
            &fake.url("api.openai.test", "/v1/chat/completions"),
            GPT_BODY,
            "x-fake-mode: no-usage",
            "no-usage",
            stream,
            unknown,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        line(&out, "no-usage ").starts_with("no-usage 0:200 "),
        "{out}"
    );
    // curl: "transfer closed with outstanding read data remaining".
    assert!(line(&out, "drop ").starts_with("drop 18:200 "), "{out}");
    let denied = line(&out, "unknown ");
    assert!(denied.starts_with("unknown 0:403 "), "{out}");
    let body: Value = serde_json::from_str(&denied["unknown 0:403 ".len()..]).unwrap();
    assert_eq!(body["error"], "unknown_model", "{out}");

    let up = fake.log();
    assert_eq!(up.len(), 2, "the unknown model never went up: {up:?}");
    assert!(
        up.iter().all(|r| r["body"]["model"] == "gpt-4o-mini"),
        "{up:?}"
    );

    let no_usage_cost = estimate(GPT_BODY, 1000, MINI_OUTPUT, MINI_INPUT);
    let drop_cost = estimate(stream, 1000, MINI_OUTPUT, MINI_INPUT);
    assert!(no_usage_cost > MINI_COST && drop_cost > MINI_COST);
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[0]["status"], 200, "{}", reqs[0]);
    assert_usd(&reqs[0]["cost_usd"], no_usage_cost, "no-usage cost_usd");
    assert_usd(&reqs[1]["cost_usd"], drop_cost, "dropped stream cost_usd");
    assert_usd(
        &reqs[1]["spend_usd"],
        no_usage_cost + drop_cost,
        "spend_usd",
    );
    let u = &reqs[2];
    assert_eq!(u["status"], 403, "{u}");
    assert_eq!(u["decision"], "deny", "{u}");
    assert_eq!(u["reason"], "unknown_model", "{u}");
    assert!(
        u.get("cost_usd").is_none_or(|c| c.as_f64() == Some(0.0)),
        "{u}"
    );
    assert_usd(
        &h.session_json()["spend_usd"],
        no_usage_cost + drop_cost,
        "session spend_usd",
    );
}

#[test]
fn passing_the_budget_ends_the_run() {
    let test = "passing_the_budget_ends_the_run";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let url = fake.url("api.openai.test", "/v1/chat/completions");
    let budget = "0.0001";
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", budget]);
    let then_wait = format!("{POST}\nsleep 20; echo survived");

    // Admitted (its estimate, max_tokens 100, fits) but its real cost
    // (0.00045) passes the budget.
    let small =
        r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    assert!(estimate(small, 100, MINI_OUTPUT, MINI_INPUT) < 100_000_000);
    let h = Home::new();
    let t0 = Instant::now();
    let o = run(
        &h,
        &flags,
        &["sh", "-c", &then_wait, "sh", &url, small, "", "small"],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(!stdout(&o).contains("survived"), "{}", stdout(&o));
    assert_eq!(fake.log().len(), 1);
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "budget_exceeded", "{s}");
    assert_eq!(s["vallignus_exit_code"], 124, "{s}");
    assert_usd(&s["spend_usd"], MINI_COST, "spend_usd");
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["status"], 200, "{}", reqs[0]);
    assert_usd(&reqs[0]["cost_usd"], MINI_COST, "cost_usd");

    // max_tokens 1000: the estimate alone is over the budget.
    assert!(estimate(GPT_BODY, 1000, MINI_OUTPUT, MINI_INPUT) > 100_000_000);
    let h = Home::new();
    let t0 = Instant::now();
    let o = run(
        &h,
        &flags,
        &["sh", "-c", &then_wait, "sh", &url, GPT_BODY, "", "big"],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let out = stdout(&o);
    assert!(!out.contains("survived"), "{out}");
    assert_eq!(fake.log().len(), 1, "the refused request never went up");
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "budget_exceeded", "{s}");
    assert_eq!(s["vallignus_exit_code"], 124, "{s}");
    assert_usd(&s["spend_usd"], 0, "spend_usd");
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["status"], 402, "{}", reqs[0]);
    assert_eq!(reqs[0]["reason"], "budget_exceeded", "{}", reqs[0]);
    assert_eq!(reqs[0]["decision"], "deny", "{}", reqs[0]);
}

#[test]
fn parallel_metered_requests_never_overshoot_the_budget() {
    let test = "parallel_metered_requests_never_overshoot_the_budget";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    if which("xargs").is_none() {
        return skip(test, "xargs is missing");
    }
    // Room for three reservations at a time; each request is slow (0.5 s)
    // so twenty at once cannot all fit.
    let reservation = estimate(GPT_BODY, 1000, MINI_OUTPUT, MINI_INPUT);
    let budget: u64 = 2_000_000_000; // 0.002 USD
    assert!(3 * reservation <= budget && 4 * reservation > budget);
    let h = Home::new();
    let flags = fake.trusted_flags(
        &["api.openai.test"],
        &["--max-spend-usd", "0.002", "--max-requests", "0"],
    );
    let script = r#"seq 20 | xargs -P 20 -I{} curl -sS -o /dev/null -w '{} %{http_code}\n' -H 'x-fake-mode: slow' -H 'content-type: application/json' -d "$2" "$1""#;
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            script,
            "sh",
            &fake.url("api.openai.test", "/v1/chat/completions"),
            GPT_BODY,
        ],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "budget_exceeded", "{s}");
    let spend = s["spend_usd"].as_f64().unwrap();
    assert!(
        spend <= usd(budget + reservation) + 1e-12,
        "spend {spend} USD passed the budget {} by more than one reservation ({})",
        usd(budget),
        usd(reservation)
    );
    // Everything that reached the upstream is paid for (its usage, or its
    // reservation when the run ended under it).
    let forwarded = fake.log().len() as u64;
    assert!(forwarded >= 1, "nothing was admitted");
    assert!(
        spend + 1e-12 >= usd(forwarded * MINI_COST),
        "{forwarded} requests reached the upstream but spend is {spend} USD"
    );
    let (reqs, _) = split(&h);
    let refused = reqs
        .iter()
        .filter(|r| r["status"] == 402 && r["reason"] == "budget_exceeded")
        .count();
    assert!(refused >= 1, "no request got 402: {reqs:?}");
    // Every charge is in a record: the costs add up to the spend.
    let recorded: f64 = reqs.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!(
        (recorded - spend).abs() < 1e-9,
        "records' cost_usd add up to {recorded}, spend_usd is {spend}: {reqs:?}"
    );
}

/// A streaming request is under way (its first event reached the agent)
/// when a request over the budget ends the run: the stream is charged its
/// reservation, and its record says so.
const IN_FLIGHT: &str = r#"
curl -sS -N -H 'x-fake-chunk-delay-ms: 1000' -d "$2" "$1" | {
  read -r first; echo "first $first"
  curl -sS -w ' %{http_code}\n' -d "$3" "$1"
  cat > /dev/null
}
echo survived
"#;

#[test]
fn a_stream_in_flight_when_the_budget_ends_the_run_is_recorded() {
    let test = "a_stream_in_flight_when_the_budget_ends_the_run_is_recorded";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let stream = r#"{"model":"gpt-4o-mini","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reservation = estimate(stream, 1000, MINI_OUTPUT, MINI_INPUT);
    // Room for the stream's reservation, not for a second one.
    assert!(reservation <= 1_000_000_000 && 2 * reservation > 1_000_000_000);
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", "0.001"]);
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            IN_FLIGHT,
            "sh",
            &fake.url("api.openai.test", "/v1/chat/completions"),
            stream,
            GPT_BODY,
        ],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("survived"), "{}", stdout(&o));
    assert_eq!(fake.log().len(), 1, "only the stream went up");
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "budget_exceeded", "{s}");
    // It reached the upstream and never reported usage: its reservation.
    assert_usd(&s["spend_usd"], reservation, "session spend_usd");
    let (reqs, _) = split(&h);
    let refused: Vec<&Value> = reqs.iter().filter(|r| r["status"] == 402).collect();
    assert_eq!(refused.len(), 1, "{reqs:?}");
    assert_eq!(refused[0]["reason"], "budget_exceeded", "{}", refused[0]);
    let streamed: Vec<&Value> = reqs.iter().filter(|r| r["status"] != 402).collect();
    assert_eq!(
        streamed.len(),
        1,
        "the stream that was charged has a net_request record: {reqs:?}"
    );
    assert_eq!(streamed[0]["model"], "gpt-4o-mini", "{}", streamed[0]);
    assert_usd(
        &streamed[0]["cost_usd"],
        reservation,
        "the stream's cost_usd",
    );
    assert_eq!(s["total_requests"], reqs.len() + 2, "two tunnels: {s}");
}

#[test]
fn passthrough_domains_are_not_intercepted() {
    let test = "passthrough_domains_are_not_intercepted";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let flags = fake.trusted_flags(
        &["api.openai.test"],
        &["--tls-passthrough", "api.openai.test"],
    );
    let script = r#"
curl -sS -w ' %{http_code}\n' "$1"; echo "bundle $?"
curl -sS -w ' %{http_code}\n' --cacert "$2" "$1"; echo "test-ca $?"
"#;
    let ca = fake.ca_str();
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            script,
            "sh",
            &fake.url("api.openai.test", "/health"),
            &ca,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    // The run's bundle does not hold the test CA: the fake server's own
    // certificate reached curl and failed verification.
    assert_eq!(line(&out, "bundle "), "bundle 60", "{out}\n{}", stderr(&o));
    assert!(out.contains(r#"{"ok": true} 200"#), "{out}");
    assert_eq!(line(&out, "test-ca "), "test-ca 0", "{out}");
    assert_eq!(fake.log().len(), 1);

    let (reqs, tunnels) = split(&h);
    assert!(reqs.is_empty(), "no per-request records: {reqs:?}");
    assert_eq!(tunnels.len(), 2, "{tunnels:?}");
    for t in &tunnels {
        assert_eq!(t["tls"], "passthrough", "{t}");
        assert_eq!(t["decision"], "allow", "{t}");
        assert_eq!(t["sni"], "api.openai.test", "{t}");
        assert_eq!(t["status"], 200, "{t}");
    }
}

/// A plain request is waiting for its (slow, 0.5 s) response when a
/// request over the budget ends the run (0.3 s later).
const WAITING: &str = r#"
curl -sS -o /dev/null -H 'x-fake-mode: slow' -d "$2" "$1" &
sleep 0.3
curl -sS -w ' %{http_code}\n' -d "$2" "$1"
wait
echo survived
"#;

#[test]
fn a_request_waiting_for_its_response_when_the_run_ends_is_recorded() {
    let test = "a_request_waiting_for_its_response_when_the_run_ends_is_recorded";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let reservation = estimate(GPT_BODY, 1000, MINI_OUTPUT, MINI_INPUT);
    assert!(reservation <= 1_000_000_000 && 2 * reservation > 1_000_000_000);
    let h = Home::new();
    let flags = fake.trusted_flags(&["api.openai.test"], &["--max-spend-usd", "0.001"]);
    let o = run(
        &h,
        &flags,
        &[
            "sh",
            "-c",
            WAITING,
            "sh",
            &fake.url("api.openai.test", "/v1/chat/completions"),
            GPT_BODY,
        ],
    );
    assert_eq!(code(&o), 124, "{}\n{}", stdout(&o), stderr(&o));
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "budget_exceeded", "{s}");
    let spend = s["spend_usd"].as_f64().unwrap();
    let forwarded = fake.log().len();
    let (reqs, _) = split(&h);
    // Whatever the timing: every request that reached the upstream has a
    // record, and the records' costs add up to the session's spend.
    let sent: Vec<&Value> = reqs.iter().filter(|r| r["status"] != 402).collect();
    assert_eq!(
        sent.len(),
        forwarded,
        "{forwarded} request(s) reached the upstream (session spend_usd {spend}), records: {reqs:?}"
    );
    let charged: f64 = reqs.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!(
        (charged - spend).abs() < 1e-12,
        "the records' cost_usd add up to {charged} USD, session spend_usd is {spend} USD: {reqs:?}"
    );
}

/// `{port}` is the fake server's: the policy file names it for
/// `resolve` and `connect_ports` (no flags for those in this test).
const RULES_POLICY: &str = r#"
constraints:
  network:
    allow_domains: [api.openai.test]
    resolve: ["api.openai.test:{port}:127.0.0.1"]
    connect_ports: [{port}]
    requests:
      - domain: api.openai.test
        methods: [POST]
        paths: [/v1/chat/]
"#;

const RULES_SCRIPT: &str = r#"
curl -sS -o /dev/null -w "post %{http_code}\n" -H 'content-type: application/json' -d "$2" "$1/v1/chat/completions"
curl -sS -o /dev/null -w "get %{http_code}\n" "$1/v1/chat/completions"
curl -sS -o /dev/null -w "other %{http_code}\n" -d '{}' "$1/v1/responses"
curl -sS --path-as-is -o /dev/null -w "dots %{http_code}\n" -d '{}' "$1/v1/chat/../../health"
"#;

#[test]
fn method_and_path_rules_apply_inside_tunnels() {
    let test = "method_and_path_rules_apply_inside_tunnels";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        RULES_POLICY.replace("{port}", &fake.port.to_string()),
    )
    .unwrap();
    let h = Home::new();
    let flags = strings(&[
        "--upstream-ca",
        &fake.ca_str(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let base = fake.url("api.openai.test", "");
    let o = run(
        &h,
        &flags,
        &["sh", "-c", RULES_SCRIPT, "sh", &base, GPT_BODY],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(line(&out, "post "), "post 200", "{out}");
    for refused in ["get ", "other ", "dots "] {
        assert_eq!(line(&out, refused), format!("{refused}403"), "{out}");
    }
    // Only the allowed request reached the upstream.
    let seen = fake.log();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["method"], "POST");
    let (reqs, _) = split(&h);
    let denied: Vec<_> = reqs
        .iter()
        .filter(|r| r["reason"] == "request_not_allowed")
        .collect();
    assert_eq!(denied.len(), 3, "{reqs:?}");
    assert!(denied
        .iter()
        .all(|r| r["status"] == 403 && r["decision"] == "deny"));
}

/// A WebSocket client by hand: CONNECT through the proxy, TLS with the
/// run's bundle, the handshake, then raw bytes echoed back.
const WS_CLIENT: &str = r#"
import os, socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
proxy = os.environ["HTTPS_PROXY"].split("//", 1)[1].rstrip("/")
ph, pp = proxy.rsplit(":", 1)
s = socket.create_connection((ph, int(pp)), timeout=10)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
r = b""
while b"\r\n\r\n" not in r:
    r += s.recv(4096)
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(s, server_hostname=host)
t.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
           "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += t.recv(4096)
head, rest = head.split(b"\r\n\r\n", 1)
print("status", head.split(b"\r\n")[0].decode())
print("accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head)
for msg in (b"ping-1", b"ping-two"):
    t.sendall(msg)
    got = rest
    while len(got) < len(msg):
        got += t.recv(4096)
    rest = b""
    print("echo", got.decode())
t.close()
"#;

#[test]
fn websockets_work_inside_intercepted_tunnels() {
    let test = "websockets_work_inside_intercepted_tunnels";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let python = system_python().unwrap();
    let h = Home::new();
    let flags = fake.flags(&["api.openai.test"], true);
    let port = fake.port.to_string();
    let o = run(
        &h,
        &flags,
        &[
            python.to_str().unwrap(),
            "-c",
            WS_CLIENT,
            "api.openai.test",
            &port,
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        line(&out, "status "),
        "status HTTP/1.1 101 Switching Protocols",
        "{out}"
    );
    assert_eq!(line(&out, "accept "), "accept True", "{out}");
    let echoes: Vec<&str> = out.lines().filter(|l| l.starts_with("echo ")).collect();
    assert_eq!(echoes, ["echo ping-1", "echo ping-two"], "{out}");
    let (reqs, _) = split(&h);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["path"], "/ws");
    assert_eq!(reqs[0]["status"], 101);
    assert_eq!(reqs[0]["tls"], "intercepted");
    assert!(reqs[0]["reason"].is_null(), "{}", reqs[0]);
    assert_eq!(reqs[0]["bytes_up"], 14, "{}", reqs[0]);
    assert_eq!(reqs[0]["bytes_down"], 14, "{}", reqs[0]);
}

const UNMETERED_SCRIPT: &str = r#"
curl -sS -o /dev/null -w "embeddings %{http_code}\n" -H 'content-type: application/json' -d '{"model":"text-embedding-3-small","input":"x"}' "$1/v1/embeddings"
curl -sS -o /dev/null -w "batches %{http_code}\n" -H 'content-type: application/json' -d '{}' "$1/v1/messages/batches"
curl -sS -o /dev/null -w "background %{http_code}\n" -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","input":"x","background":true}' "$1/v1/responses"
curl -sS -o /dev/null -w "prefixed %{http_code}\n" -H 'content-type: application/json' -d "$2" "$1/api/v1/chat/completions"
curl -sS -o /dev/null -w "health %{http_code}\n" "$1/health"
"#;

#[test]
fn billable_apis_that_cannot_be_priced_are_refused_under_a_budget() {
    let test = "billable_apis_that_cannot_be_priced_are_refused_under_a_budget";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    let h = Home::new();
    let flags = fake.trusted_flags(
        &["api.openai.test"],
        &["--max-spend-usd", "1", "--policy", "/dev/null"],
    );
    let base = fake.url("api.openai.test", "");
    let o = run(
        &h,
        &flags,
        &["sh", "-c", UNMETERED_SCRIPT, "sh", &base, GPT_BODY],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for refused in ["embeddings ", "batches ", "background "] {
        assert_eq!(line(&out, refused), format!("{refused}403"), "{out}");
    }
    // An OpenAI-compatible path under another prefix is metered, not refused
    // (the fake answers 404 for it, and an error without usage is free).
    assert_eq!(line(&out, "prefixed "), "prefixed 404", "{out}");
    assert_eq!(line(&out, "health "), "health 200", "{out}");
    let (reqs, _) = split(&h);
    let refused: Vec<_> = reqs
        .iter()
        .filter(|r| r["reason"] == "unmetered_endpoint")
        .collect();
    assert_eq!(refused.len(), 3, "{reqs:?}");
    let prefixed = reqs
        .iter()
        .find(|r| r["path"] == "/api/v1/chat/completions")
        .unwrap();
    assert_eq!(prefixed["model"], "gpt-4o-mini", "{prefixed}");
    assert_usd(&prefixed["cost_usd"], 0, "an error without usage");
    // Nothing refused reached the upstream.
    let paths: Vec<String> = fake
        .log()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/api/v1/chat/completions", "/health"], "{paths:?}");
}

/// With a mount namespace the agent's /run is a private tmpfs (the host's
/// daemon sockets live there); its CA bundle is bound back into it, so
/// interception works at `standard` and `strict` as it does at `none`.
#[test]
fn the_ca_bundle_is_kept_in_the_agents_private_run() {
    let test = "the_ca_bundle_is_kept_in_the_agents_private_run";
    let Some(fake) = fake_for(test, None) else {
        return;
    };
    for level in ["standard", "strict"] {
        let h = Home::new();
        let mut flags = fake.flags(&["api.openai.test"], true);
        flags.extend(strings(&["--isolation", level, "--user", "nobody"]));
        let script = r#"
echo "certs $(grep -c 'BEGIN CERTIFICATE' "$SSL_CERT_FILE")"
curl -sS -w ' %{http_code}\n' "$1"
"#;
        let url = fake.url("api.openai.test", "/health");
        let o = run(&h, &flags, &["sh", "-c", script, "sh", &url]);
        assert_eq!(code(&o), 0, "{level}: {}\n{}", stdout(&o), stderr(&o));
        let out = stdout(&o);
        let certs: u32 = line(&out, "certs ")[6..].parse().unwrap();
        assert!(certs >= 1, "{level}: {out}");
        assert!(out.contains(r#"{"ok": true} 200"#), "{level}: {out}");
        let s = h.session_json();
        let detail = s["enforcement"]["private_run"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("/run/vallignus/tls/{}.pem", h.only_session_id())),
            "{detail}"
        );
    }
}
