#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use hyper::header::{HeaderMap, HeaderValue};

use super::*;
use crate::policy::domain::parse_host;

const OPENAI_SECRET: &str = "sk-proj-REALsecret0123456789";
const ANTHROPIC_SECRET: &str = "sk-ant-api03-REALsecretABCDEF";

fn spec(s: &str) -> CredentialSpec {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn host(s: &str) -> Host {
    parse_host(s).unwrap()
}

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    move |k| map.get(k).cloned()
}

/// OPENAI_API_KEY for api.openai.com, ANTHROPIC_API_KEY for *.anthropic.com.
fn two() -> Credentials {
    Credentials::load(
        vec![
            spec("OPENAI_API_KEY=REAL_OPENAI@api.openai.com"),
            spec("ANTHROPIC_API_KEY=REAL_ANTHROPIC@*.anthropic.com"),
        ],
        env_of(&[
            ("REAL_OPENAI", OPENAI_SECRET),
            ("REAL_ANTHROPIC", ANTHROPIC_SECRET),
        ]),
    )
    .unwrap()
}

fn placeholder(creds: &Credentials, name: &str) -> String {
    creds
        .agent_env()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap()
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap()
}

#[test]
fn parses_env_and_file_specs() {
    let s = spec("OPENAI_API_KEY=REAL_OPENAI_KEY@API.openai.com,*.openai.com,api.openai.com");
    assert_eq!(s.name, "OPENAI_API_KEY");
    assert_eq!(s.source, Source::Env("REAL_OPENAI_KEY".into()));
    assert_eq!(
        s.hosts,
        vec![
            DomainPattern::Exact("api.openai.com".into()),
            DomainPattern::Subdomains("openai.com".into()),
        ],
        "normalised, duplicates dropped"
    );
    assert_eq!(
        s.to_string(),
        "OPENAI_API_KEY=REAL_OPENAI_KEY@api.openai.com,*.openai.com"
    );
    assert_eq!(spec(&s.to_string()), s, "Display parses back");

    // The last '@' separates the hosts; a file name may contain '@'.
    let f = spec("_K1=@/run/secrets/a@b/key@10.0.0.1");
    assert_eq!(f.name, "_K1");
    assert_eq!(f.source, Source::File("/run/secrets/a@b/key".into()));
    assert_eq!(f.hosts, vec![DomainPattern::parse("10.0.0.1").unwrap()]);
    assert_eq!(f.to_string(), "_K1=@/run/secrets/a@b/key@10.0.0.1");
    assert_eq!(
        spec("K=@relative.txt@x.org").source,
        Source::File("relative.txt".into())
    );
}

#[test]
fn bad_specs_name_the_entry_and_the_part() {
    assert_eq!(
        "X=@".parse::<CredentialSpec>().unwrap_err().to_string(),
        r#"invalid --credential "X=@": expected NAME=ENV_VAR@HOST[,HOST...] or NAME=@FILE@HOST[,HOST...]"#
    );
    for (entry, part) in [
        ("X", "expected NAME=ENV_VAR@HOST"),
        ("X=VAR", "expected NAME=ENV_VAR@HOST"),
        ("=VAR@a.com", "expected NAME=ENV_VAR@HOST"),
        ("X=@a.com", "expected NAME=ENV_VAR@HOST"),
        ("", "expected NAME=ENV_VAR@HOST"),
        (
            "1X=VAR@a.com",
            r#"the name "1X" is not a valid environment variable name"#,
        ),
        (
            "X-Y=VAR@a.com",
            r#"the name "X-Y" is not a valid environment variable name"#,
        ),
        (
            "X=sk-abc@a.com",
            r#"the source "sk-abc" is not a valid environment variable name"#,
        ),
        ("X=@@a.com", "the file name is empty"),
        ("X=VAR@", "host \"\": empty host name"),
        ("X=VAR@a.com,,b.com", "host \"\": empty host name"),
        ("X=VAR@a.com,", "host \"\": empty host name"),
        ("X=VAR@*", "would match every host"),
        ("X=VAR@a.*.com", "wildcard is allowed only"),
        ("X=VAR@https://a.com", "looks like a URL"),
        ("X=VAR@a.com:443", "looks like a URL or host:port"),
    ] {
        let message = entry.parse::<CredentialSpec>().unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("invalid --credential {entry:?}: ")),
            "{entry}: {message}"
        );
        assert!(message.contains(part), "{entry}: {message}");
    }
}

#[test]
fn policy_entries() {
    let yaml = "- name: OPENAI_API_KEY\n  env: REAL_OPENAI_KEY\n  hosts: [api.openai.com]\n\
                - name: GH_TOKEN\n  file: /run/secrets/gh\n  hosts: [api.github.com, \"*.githubusercontent.com\"]\n";
    let entries: Vec<CredentialEntry> = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(
        entries[0].to_spec().unwrap(),
        spec("OPENAI_API_KEY=REAL_OPENAI_KEY@api.openai.com")
    );
    assert_eq!(
        entries[1].to_spec().unwrap(),
        spec("GH_TOKEN=@/run/secrets/gh@api.github.com,*.githubusercontent.com")
    );

    let unknown = "- name: K\n  env: V\n  hosts: [a.com]\n  value: sk-1\n";
    assert!(serde_saphyr::from_str::<Vec<CredentialEntry>>(unknown).is_err());

    let entry = |env: Option<&str>, file: Option<&str>, hosts: &[&str]| CredentialEntry {
        name: "K".into(),
        env: env.map(Into::into),
        file: file.map(Into::into),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };
    for (bad, part) in [
        (
            entry(Some("V"), Some("/f"), &["a.com"]),
            "exactly one of `env` and `file`",
        ),
        (
            entry(None, None, &["a.com"]),
            "exactly one of `env` and `file`",
        ),
        (entry(Some("V"), None, &[]), "no host"),
        (
            entry(Some("V-1"), None, &["a.com"]),
            "not a valid environment variable name",
        ),
        (entry(None, Some(""), &["a.com"]), "the file name is empty"),
        (
            entry(Some("V"), None, &["*.a.com", "http://b.com"]),
            "host \"http://b.com\"",
        ),
    ] {
        let message = bad.to_spec().unwrap_err().to_string();
        assert!(
            message.starts_with("invalid credentials entry \"K\": "),
            "{message}"
        );
        assert!(message.contains(part), "{message}");
    }
    let mut bad_name = entry(Some("V"), None, &["a.com"]);
    bad_name.name = "9K".into();
    assert!(bad_name
        .to_spec()
        .unwrap_err()
        .to_string()
        .contains(r#"the name "9K" is not a valid"#));
}

#[test]
fn loads_from_env() {
    let env = env_of(&[("REAL", "  sk-abc 123\n"), ("EMPTY", " \n")]);
    let secret = Source::Env("REAL".into()).load(&env).unwrap();
    assert_eq!(secret.expose(), b"sk-abc 123", "trimmed at both ends only");

    let unset = Source::Env("MISSING".into()).load(&env).unwrap_err();
    assert_eq!(unset.to_string(), "environment variable MISSING is not set");

    let empty = spec("K=EMPTY@a.com").load(&env).unwrap_err();
    assert_eq!(
        empty.to_string(),
        "credential K: environment variable EMPTY is empty (or only whitespace)"
    );

    let not_utf8 = |_: &str| Some(OsString::from_vec(vec![b's', 0xff, b'k']));
    let e = Source::Env("RAW".into()).load(not_utf8).unwrap_err();
    assert_eq!(e.to_string(), "environment variable RAW is not valid UTF-8");
}

#[test]
fn loads_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key@1");
    std::fs::write(&path, format!("{OPENAI_SECRET}\n")).unwrap();
    let s = spec(&format!("K=@{}@api.openai.com", path.display()));
    assert_eq!(s.source, Source::File(path.clone()));
    assert_eq!(s.load(no_env).unwrap().expose(), OPENAI_SECRET.as_bytes());

    let missing = dir.path().join("missing");
    let e = Source::File(missing.clone()).load(no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );

    let max = dir.path().join("max");
    std::fs::write(&max, vec![b'a'; 64 * 1024]).unwrap();
    assert_eq!(
        Source::File(max).load(no_env).unwrap().expose().len(),
        64 * 1024
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).unwrap();
    let e = Source::File(big.clone()).load(no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} is larger than 64 KiB; a secret file holds only the secret",
            big.display()
        )
    );

    let binary = dir.path().join("binary");
    std::fs::write(&binary, b"sk-\xff\xfe").unwrap();
    let e = Source::File(binary.clone()).load(no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is not valid UTF-8", binary.display())
    );

    let e = Source::File(dir.path().to_path_buf())
        .load(no_env)
        .unwrap_err();
    assert!(e.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn refuses_empty_and_unsafe_secrets_without_showing_them() {
    assert!(matches!(
        Secret::new(""),
        Err(CredentialError::EmptySecret { .. })
    ));
    assert!(matches!(
        Secret::new(" \t\r\n"),
        Err(CredentialError::EmptySecret { .. })
    ));
    for bad in [
        "sk-one\ntwo",
        "sk-one\rtwo",
        "sk-\x00zero",
        "sk-\x1besc",
        "sk-\x7fdel",
        "sk-tab\tinside",
        "sk-été",
    ] {
        let e = Secret::new(bad).unwrap_err();
        assert!(matches!(e, CredentialError::SecretChars { .. }), "{bad:?}");
        let message = e.to_string();
        assert!(!message.contains("sk-"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, bad).unwrap();
        let e = spec(&format!("K=@{}@a.com", path.display()))
            .load(no_env)
            .unwrap_err();
        let message = format!("{e} / {e:?}");
        assert!(message.contains("credential K: file "), "{message}");
        assert!(message.contains("control character"), "{message}");
        assert!(!message.contains("sk-"), "{message}");

        let e = spec("K=V@a.com").load(env_of(&[("V", bad)])).unwrap_err();
        let message = format!("{e} / {e:?}");
        assert!(
            message.contains("environment variable V contains"),
            "{message}"
        );
        assert!(!message.contains("sk-"), "{message}");
    }
}

#[test]
fn secret_debug_is_redacted() {
    let secret = Secret::new(OPENAI_SECRET).unwrap();
    assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    assert_eq!(format!("{secret:#?}"), "Secret(<redacted>)");
    let creds = two();
    let debug = format!("{creds:?} {:?}", creds.listing());
    assert!(!debug.contains(OPENAI_SECRET), "{debug}");
    assert!(!debug.contains(ANTHROPIC_SECRET), "{debug}");
}

#[test]
fn placeholder_format_and_uniqueness() {
    let creds = two();
    let env = creds.agent_env();
    assert_eq!(env.len(), 2);
    for (name, ph) in &env {
        let rest = ph
            .strip_prefix(&format!("vallignus-ph-{}-", name.to_ascii_lowercase()))
            .unwrap_or_else(|| panic!("{ph}"));
        assert_eq!(rest.len(), 32, "{ph}");
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{ph}"
        );
        assert!(HeaderValue::from_str(ph).is_ok());
    }
    assert!(!env[0].1.contains(&env[1].1) && !env[1].1.contains(&env[0].1));

    // Fresh per run.
    assert_ne!(placeholder(&two(), "OPENAI_API_KEY"), env[0].1);
    let a = Placeholder::generate("K").unwrap();
    let b = Placeholder::generate("K").unwrap();
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), "vallignus-ph-k-".len() + 32);
}

#[test]
fn colliding_placeholders_are_regenerated() {
    // KEY and key lowercase alike: the same random bytes give the same
    // placeholder, which must be drawn again.
    let loaded = || {
        vec![
            (spec("KEY=A@a.com"), Secret::new("one").unwrap()),
            (spec("key=B@b.com"), Secret::new("two").unwrap()),
        ]
    };
    let mut draws = [[0u8; 16], [0u8; 16], [1u8; 16]].into_iter();
    let mut calls = 0;
    let creds = Credentials::with_random(loaded(), |buf| {
        calls += 1;
        *buf = draws.next().unwrap();
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, 3);
    let env = creds.agent_env();
    assert_eq!(env[0].1, format!("vallignus-ph-key-{}", "00".repeat(16)));
    assert_eq!(env[1].1, format!("vallignus-ph-key-{}", "01".repeat(16)));

    let e = Credentials::with_random(loaded(), |buf| {
        *buf = [7; 16];
        Ok(())
    })
    .unwrap_err();
    assert!(e.to_string().contains("kept colliding"), "{e}");
}

#[test]
fn duplicate_names_are_refused() {
    let specs = vec![spec("K=A@a.com"), spec("K=@/nonexistent@b.com")];
    let e = Credentials::load(specs, env_of(&[("A", "x")])).unwrap_err();
    assert_eq!(e.to_string(), "credential K is given more than once");
    let loaded = vec![
        (spec("K=A@a.com"), Secret::new("x").unwrap()),
        (spec("K=B@b.com"), Secret::new("y").unwrap()),
    ];
    assert!(matches!(
        Credentials::new(loaded),
        Err(CredentialError::Duplicate { .. })
    ));
}

#[test]
fn load_errors_name_the_credential() {
    let e = Credentials::load(vec![spec("K=UNSET_VAR@a.com")], no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        "credential K: environment variable UNSET_VAR is not set"
    );
}

#[test]
fn rewrites_listed_hosts() {
    let creds = two();
    let openai = placeholder(&creds, "OPENAI_API_KEY");
    let anthropic = placeholder(&creds, "ANTHROPIC_API_KEY");

    let mut headers = HeaderMap::new();
    headers.insert("authorization", header(&format!("Bearer {openai}")));
    headers.insert("content-type", header("application/json"));
    let done = creds
        .rewrite_headers(&host("API.OpenAI.com"), &mut headers)
        .unwrap();
    assert_eq!(done.injected, vec!["OPENAI_API_KEY"]);
    let auth = &headers["authorization"];
    assert_eq!(
        auth.as_bytes(),
        format!("Bearer {OPENAI_SECRET}").as_bytes()
    );
    assert!(auth.is_sensitive());
    assert!(!headers["content-type"].is_sensitive());

    // Wildcard pattern: subdomains only.
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", header(&anthropic));
    let done = creds
        .rewrite_headers(&host("api.anthropic.com"), &mut headers)
        .unwrap();
    assert_eq!(done.injected, vec!["ANTHROPIC_API_KEY"]);
    assert_eq!(headers["x-api-key"].as_bytes(), ANTHROPIC_SECRET.as_bytes());
    assert!(headers["x-api-key"].is_sensitive());

    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", header(&anthropic));
    let e = creds
        .rewrite_headers(&host("anthropic.com"), &mut headers)
        .unwrap_err();
    assert_eq!(e.credential, "ANTHROPIC_API_KEY");
}

#[test]
fn multiple_occurrences_and_values() {
    let creds = Credentials::load(
        vec![
            spec("A_KEY=RA@a.example,b.example"),
            spec("B_KEY=RB@*.example"),
        ],
        env_of(&[("RA", "secret-a"), ("RB", "secret-b")]),
    )
    .unwrap();
    let a = placeholder(&creds, "A_KEY");
    let b = placeholder(&creds, "B_KEY");
    let mut headers = HeaderMap::new();
    headers.insert("authorization", header(&format!("{a}:{b};{a}{a} end")));
    headers.append("authorization", header(&format!("again {b}")));
    headers.insert("x-other", header("no placeholder here"));
    let done = creds
        .rewrite_headers(&host("a.example"), &mut headers)
        .unwrap();
    assert_eq!(done.injected, vec!["A_KEY", "B_KEY"], "credential order");
    let values: Vec<&[u8]> = headers
        .get_all("authorization")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(
        values,
        vec![
            &b"secret-a:secret-b;secret-asecret-a end"[..],
            &b"again secret-b"[..]
        ]
    );
    assert!(headers
        .get_all("authorization")
        .iter()
        .all(|v| v.is_sensitive()));
    assert_eq!(headers["x-other"], "no placeholder here");
}

#[test]
fn exfiltration_is_refused_and_leaves_headers_unchanged() {
    let creds = two();
    let openai = placeholder(&creds, "OPENAI_API_KEY");
    let anthropic = placeholder(&creds, "ANTHROPIC_API_KEY");

    let mut headers = HeaderMap::new();
    headers.insert("authorization", header(&format!("Bearer {openai}")));
    let before = headers.clone();
    let e = creds
        .rewrite_headers(&host("evil.example"), &mut headers)
        .unwrap_err();
    assert_eq!(
        e,
        Exfiltration {
            credential: "OPENAI_API_KEY".into(),
            header: "authorization".into(),
        }
    );
    assert_eq!(headers, before);
    let message = e.to_string();
    assert!(message.contains("OPENAI_API_KEY") && message.contains("authorization"));
    assert!(!message.contains(OPENAI_SECRET) && !message.contains(&openai));

    // All or nothing: the legitimate header is not rewritten either.
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", header(&anthropic));
    headers.insert("x-smuggle", header(&format!("q={openai}")));
    let before = headers.clone();
    let e = creds
        .rewrite_headers(&host("api.anthropic.com"), &mut headers)
        .unwrap_err();
    assert_eq!(e.credential, "OPENAI_API_KEY");
    assert_eq!(e.header, "x-smuggle");
    assert_eq!(headers, before);
    assert!(!headers["x-api-key"].is_sensitive());
}

#[test]
fn no_placeholder_leaves_headers_untouched() {
    let creds = two();
    let openai = placeholder(&creds, "OPENAI_API_KEY");
    let mut headers = HeaderMap::new();
    headers.insert("authorization", header("Bearer sk-user-supplied"));
    // Look-alikes are not placeholders: truncated, other random part, case.
    headers.insert("x-a", header(&openai[..openai.len() - 1]));
    headers.insert(
        "x-b",
        header("vallignus-ph-openai_api_key-00000000000000000000000000000000"),
    );
    headers.insert("x-c", header(&openai.to_ascii_uppercase()));
    headers.insert("x-d", header("vallignus-ph-vallignus-ph-"));
    let before = headers.clone();
    let done = creds
        .rewrite_headers(&host("evil.example"), &mut headers)
        .unwrap();
    assert!(done.is_empty());
    assert_eq!(headers, before);
    assert!(headers.iter().all(|(_, v)| !v.is_sensitive()));

    let none = Credentials::none();
    assert!(none.is_empty());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", header(&format!("Bearer {openai}")));
    assert!(none
        .rewrite_headers(&host("evil.example"), &mut headers)
        .unwrap()
        .is_empty());
    assert_eq!(none.find_in(openai.as_bytes()), None);
}

#[test]
fn finds_placeholders_in_urls_and_bodies() {
    let creds = two();
    let openai = placeholder(&creds, "OPENAI_API_KEY");
    let anthropic = placeholder(&creds, "ANTHROPIC_API_KEY");
    let url = format!("/v1/steal?k={anthropic}&x=1");
    assert_eq!(creds.find_in(url.as_bytes()), Some("ANTHROPIC_API_KEY"));
    assert_eq!(creds.find_in(b"/v1/chat/completions"), None);

    let body = format!(r#"{{"a":"{anthropic}","b":"{openai}"}}"#);
    let openai_host = host("api.openai.com");
    assert_eq!(
        creds.find_foreign(&openai_host, body.as_bytes()),
        Some("ANTHROPIC_API_KEY")
    );
    let only_openai = format!(r#"{{"b":"{openai}"}}"#);
    assert_eq!(
        creds.find_foreign(&openai_host, only_openai.as_bytes()),
        None
    );
    assert_eq!(
        creds.find_foreign(&host("evil.example"), only_openai.as_bytes()),
        Some("OPENAI_API_KEY")
    );
    assert!(creds.max_placeholder_len() >= anthropic.len());
    assert_eq!(
        creds.max_placeholder_len(),
        openai.len().max(anthropic.len())
    );
}

#[test]
fn listing_shows_no_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gh");
    std::fs::write(&path, "ghp_secretvalue\n").unwrap();
    let creds = Credentials::load(
        vec![
            spec("OPENAI_API_KEY=REAL_OPENAI@api.openai.com,*.openai.com"),
            spec(&format!("GH_TOKEN=@{}@api.github.com", path.display())),
        ],
        env_of(&[("REAL_OPENAI", OPENAI_SECRET)]),
    )
    .unwrap();
    assert_eq!(creds.len(), 2);
    assert_eq!(creds.source_env_vars(), vec!["REAL_OPENAI"]);
    let listing = creds.listing();
    assert_eq!(
        listing[0],
        CredentialInfo {
            name: "OPENAI_API_KEY".into(),
            source: "env REAL_OPENAI".into(),
            hosts: vec!["api.openai.com".into(), "*.openai.com".into()],
        }
    );
    assert_eq!(
        listing[0].to_string(),
        "OPENAI_API_KEY from env REAL_OPENAI for api.openai.com, *.openai.com"
    );
    assert_eq!(listing[1].source, format!("file {}", path.display()));
    let json = serde_json::to_string(&listing).unwrap();
    assert!(!json.contains(OPENAI_SECRET) && !json.contains("ghp_secretvalue"));
    assert!(!json.contains(PLACEHOLDER_PREFIX));
    let spec_json =
        serde_json::to_value(spec("OPENAI_API_KEY=REAL_OPENAI@api.openai.com")).unwrap();
    assert_eq!(
        spec_json,
        serde_json::json!({"name": "OPENAI_API_KEY", "source": "env REAL_OPENAI", "hosts": ["api.openai.com"]})
    );
}

#[test]
fn secrets_go_only_into_key_headers() {
    let creds = Credentials::load(
        vec![spec("K=RK@api.example")],
        env_of(&[("RK", "the-secret")]),
    )
    .unwrap();
    let ph = placeholder(&creds, "K");
    for name in ["origin", "sec-websocket-protocol", "x-custom"] {
        let mut headers = HeaderMap::new();
        headers.insert(name, header(&ph));
        let err = creds
            .rewrite_headers(&host("api.example"), &mut headers)
            .unwrap_err();
        assert_eq!(err.header, name);
        assert_eq!(headers[name], ph.as_str(), "left unchanged");
    }
    for name in CREDENTIAL_HEADERS {
        let mut headers = HeaderMap::new();
        headers.insert(*name, header(&ph));
        let done = creds
            .rewrite_headers(&host("api.example"), &mut headers)
            .unwrap();
        assert_eq!(done.injected, ["K"]);
        assert_eq!(headers[*name], "the-secret");
    }
}
