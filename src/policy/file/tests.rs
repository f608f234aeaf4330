use super::*;

const SEED: &str = r#"# the seed's example
security_context: { level: strict, user: nobody }
constraints:
  max_runtime: 300s
  max_output_bytes: 50MB
  max_output_lines: 10000
  memory: 512MB
  pids: 256
  cpu: 0.5
  network:
    allow_domains: [api.openai.com, "*.Example.com", "bücher.de."]
    deny_domains: []
    default_policy: deny
    max_requests: 100
    max_spend_usd: 5.0
violation_protocol: { action: log, alert_webhook: "http://127.0.0.1:9000/hook" }
"#;

fn p(text: &str) -> Result<PolicyFile, PolicyFileError> {
    parse(text, Path::new("test.yaml"))
}

/// Parse, expect an error, and check it names the file, the line and the key.
fn err_at(text: &str, line: u64, key: &str) -> PolicyFileError {
    let e = match p(text) {
        Ok(f) => panic!("expected an error for {text:?}, got {f:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert_eq!(e.line(), Some(line), "{msg}");
    assert_eq!(e.key(), Some(key), "{msg}");
    assert!(msg.contains("test.yaml"), "{msg}");
    assert!(msg.contains(&format!("line {line}")), "{msg}");
    assert!(msg.contains(key), "{msg}");
    e
}

#[test]
fn seed_example_parses() {
    let f = p(SEED).unwrap();
    assert_eq!(f.source, Path::new("test.yaml"));
    assert_eq!(f.security_context.level, Some(SecurityLevel::Strict));
    assert_eq!(f.security_context.user, Some(User::Name("nobody".into())));
    let c = &f.constraints;
    assert_eq!(c.max_runtime, Some(Duration::from_secs(300)));
    assert_eq!(c.max_output_bytes, Some(50 << 20));
    assert_eq!(c.max_output_lines, Some(10000));
    assert_eq!(c.memory, Some(512 << 20));
    assert_eq!(c.pids, Some(256));
    assert_eq!(c.cpu, Some(0.5));
    let n = c.network.as_ref().unwrap();
    let allow: Vec<String> = n.allow_domains.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        allow,
        ["api.openai.com", "*.example.com", "xn--bcher-kva.de"]
    );
    assert!(n.deny_domains.is_empty());
    assert_eq!(n.default_policy, Some(DefaultPolicy::Deny));
    assert_eq!(n.max_requests, Some(100));
    assert_eq!(n.max_spend_usd, Some(5.0));
    assert_eq!(f.violation_protocol.action, Some(ViolationAction::Log));
    assert_eq!(
        f.violation_protocol.alert_webhook.as_deref(),
        Some("http://127.0.0.1:9000/hook")
    );
}

#[test]
fn empty_and_comment_only_files_are_all_defaults() {
    for text in ["", "\n", "# nothing\n  # here\n", "---\n", "---\n...\n"] {
        let f = p(text).unwrap();
        assert_eq!(
            f,
            PolicyFile {
                source: "test.yaml".into(),
                ..PolicyFile::default()
            },
            "{text:?}"
        );
    }
    // Empty sections and nulls are "not set".
    let f = p("constraints:\nsecurity_context: ~\nviolation_protocol: {}\n").unwrap();
    assert_eq!(f.constraints, Constraints::default());
    let f = p("constraints:\n  max_runtime: ~\n  network:\n").unwrap();
    assert_eq!(f.constraints.max_runtime, None);
    assert_eq!(f.constraints.network, None);
}

#[test]
fn value_forms() {
    let f = p("constraints:\n  max_runtime: 1.5\n  max_output_bytes: 1048576\n  memory: \"2GiB\"\n  cpu: 2\n  pids: \"64\"\n").unwrap();
    assert_eq!(f.constraints.max_runtime, Some(Duration::from_millis(1500)));
    assert_eq!(f.constraints.max_output_bytes, Some(1 << 20));
    assert_eq!(f.constraints.memory, Some(2 << 30));
    assert_eq!(f.constraints.cpu, Some(2.0));
    assert_eq!(f.constraints.pids, Some(64));
    let f = p("constraints: {max_runtime: 250ms}\nsecurity_context: {user: 65534, level: none}\n")
        .unwrap();
    assert_eq!(f.constraints.max_runtime, Some(Duration::from_millis(250)));
    assert_eq!(f.security_context.user, Some(User::Id(65534)));
    assert_eq!(f.security_context.level, Some(SecurityLevel::Unconfined));
    let f = p("constraints: {max_runtime: 5m, max_output_lines: 0}\n").unwrap();
    assert_eq!(f.constraints.max_runtime, Some(Duration::from_secs(300)));
    assert_eq!(
        f.constraints.max_output_lines,
        Some(0),
        "0 is kept: explicit no cap"
    );
    // Duplicates collapse after normalisation.
    let f = p("constraints:\n  network:\n    deny_domains: [a.com, A.COM., a.com]\n").unwrap();
    assert_eq!(f.constraints.network.unwrap().deny_domains.len(), 1);
}

#[test]
fn unknown_keys() {
    let e = err_at(
        "constraints:\n  pids: 5\n  bogus: 1\n",
        3,
        "constraints.bogus",
    );
    assert!(matches!(e, PolicyFileError::UnknownKey { .. }), "{e:?}");
    assert!(e.to_string().contains("unknown key `bogus`"), "{e}");
    assert!(
        e.to_string().contains("pids"),
        "lists the expected keys: {e}"
    );
    let e = err_at("# c\nconstraint:\n  pids: 5\n", 2, "constraint");
    assert!(matches!(e, PolicyFileError::UnknownKey { .. }), "{e:?}");
    let e = err_at(
        "constraints:\n  network:\n    allow_domain: [a.com]\n",
        3,
        "constraints.network.allow_domain",
    );
    assert!(matches!(e, PolicyFileError::UnknownKey { .. }), "{e:?}");
    err_at(
        "security_context:\n  level: strict\n  group: x\n",
        3,
        "security_context.group",
    );
    err_at(
        "violation_protocol: {action: log, retries: 3}\n",
        1,
        "violation_protocol.retries",
    );
}

#[test]
fn wrong_types() {
    let e = err_at("constraints:\n  pids: abc\n", 2, "constraints.pids");
    assert!(matches!(e, PolicyFileError::InvalidValue { .. }), "{e:?}");
    assert!(e.to_string().contains("whole number"), "{e}");
    err_at("constraints:\n  pids: 1.5\n", 2, "constraints.pids");
    err_at("constraints:\n  pids: true\n", 2, "constraints.pids");
    err_at(
        "constraints:\n  max_runtime: soon\n",
        2,
        "constraints.max_runtime",
    );
    err_at(
        "constraints:\n  max_runtime: [1]\n",
        2,
        "constraints.max_runtime",
    );
    err_at("constraints:\n  memory: lots\n", 2, "constraints.memory");
    err_at(
        "constraints:\n  max_output_bytes: 1.5\n",
        2,
        "constraints.max_output_bytes",
    );
    err_at("constraints:\n  cpu: half\n", 2, "constraints.cpu");
    err_at(
        "security_context:\n  level: paranoid\n",
        2,
        "security_context.level",
    );
    err_at(
        "security_context:\n  level: 3\n",
        2,
        "security_context.level",
    );
    err_at(
        "security_context:\n  user: \"bad user\"\n",
        2,
        "security_context.user",
    );
    err_at(
        "security_context:\n  user: -1\n",
        2,
        "security_context.user",
    );
    err_at(
        "violation_protocol:\n  action: explode\n",
        2,
        "violation_protocol.action",
    );
    err_at(
        "constraints:\n  network:\n    default_policy: maybe\n",
        3,
        "constraints.network.default_policy",
    );
    err_at(
        "constraints:\n  network:\n    max_spend_usd: lots\n",
        3,
        "constraints.network.max_spend_usd",
    );
    // A scalar where a list or a mapping belongs.
    let e = err_at(
        "constraints:\n  network:\n    allow_domains: api.openai.com\n",
        3,
        "constraints.network.allow_domains",
    );
    assert!(matches!(e, PolicyFileError::Syntax { .. }), "{e:?}");
    err_at("constraints: 5\n", 1, "constraints");
    err_at(
        "constraints:\n  network: [a.com]\n",
        2,
        "constraints.network",
    );
    // A list item of the wrong type names its index.
    err_at(
        "constraints:\n  network:\n    allow_domains:\n      - a.com\n      - [b.com]\n",
        5,
        "constraints.network.allow_domains[1]",
    );
}

#[test]
fn impossible_values() {
    for (text, line, key, what) in [
        (
            "constraints:\n  max_output_bytes: -5\n",
            2,
            "constraints.max_output_bytes",
            "negative",
        ),
        (
            "constraints:\n  max_output_bytes: -5MB\n",
            2,
            "constraints.max_output_bytes",
            "negative",
        ),
        (
            "constraints:\n  memory: -1\n",
            2,
            "constraints.memory",
            "negative",
        ),
        (
            "constraints:\n  memory: 0\n",
            2,
            "constraints.memory",
            "at least 1MiB",
        ),
        (
            "constraints:\n  memory: 512\n",
            2,
            "constraints.memory",
            "at least 1MiB",
        ),
        (
            "constraints:\n  max_runtime: -3s\n",
            2,
            "constraints.max_runtime",
            "negative",
        ),
        (
            "constraints:\n  max_runtime: -1.5\n",
            2,
            "constraints.max_runtime",
            "negative",
        ),
        (
            "constraints:\n  max_output_lines: -1\n",
            2,
            "constraints.max_output_lines",
            "negative",
        ),
        (
            "constraints:\n  pids: 0\n",
            2,
            "constraints.pids",
            "at least 1",
        ),
        (
            "constraints:\n  pids: -4\n",
            2,
            "constraints.pids",
            "negative",
        ),
        (
            "constraints:\n  cpu: 0\n",
            2,
            "constraints.cpu",
            "greater than 0",
        ),
        (
            "constraints:\n  cpu: -0.5\n",
            2,
            "constraints.cpu",
            "greater than 0",
        ),
        (
            "constraints:\n  cpu: 0.001\n",
            2,
            "constraints.cpu",
            "at least 0.01",
        ),
        (
            "constraints:\n  cpu: 1e9\n",
            2,
            "constraints.cpu",
            "too large",
        ),
        (
            "constraints:\n  network:\n    max_requests: -1\n",
            3,
            "constraints.network.max_requests",
            "negative",
        ),
        (
            "constraints:\n  network:\n    max_spend_usd: -2\n",
            3,
            "constraints.network.max_spend_usd",
            "negative",
        ),
        (
            "constraints:\n  network:\n    max_spend_usd: 0\n",
            3,
            "constraints.network.max_spend_usd",
            "greater than 0",
        ),
    ] {
        let e = err_at(text, line, key);
        assert!(matches!(e, PolicyFileError::InvalidValue { .. }), "{e:?}");
        assert!(e.to_string().contains(what), "{text:?}: {e}");
    }
}

#[test]
fn non_finite_numbers() {
    // The YAML parser itself refuses .nan/.inf; the message still names line and key.
    err_at("constraints:\n  cpu: .nan\n", 2, "constraints.cpu");
    err_at(
        "constraints:\n  network: {max_spend_usd: .inf}\n",
        2,
        "constraints.network.max_spend_usd",
    );
}

#[test]
fn malformed_domain_patterns() {
    for (item, what) in [
        ("\"*.\"", "wildcard"),
        ("\"a*b.com\"", "wildcard"),
        ("\"*\"", "every host"),
        ("https://api.openai.com/v1", "URL"),
        ("api.openai.com:443", "URL"),
        ("a..b.com", "empty label"),
        ("\"*.10.0.0.1\"", "IP address"),
        ("42", "expected a host name"),
    ] {
        let text = format!(
            "constraints:\n  network:\n    allow_domains:\n      - ok.com\n      - {item}\n"
        );
        let e = err_at(&text, 5, "constraints.network.allow_domains[1]");
        assert!(e.to_string().contains(what), "{item}: {e}");
    }
    // Flow style: each item still has its own line.
    err_at(
        "constraints:\n  network:\n    allow_domains: [ok.com]\n    deny_domains: [ok.com,\n      \"b*.com\"]\n",
        5,
        "constraints.network.deny_domains[1]",
    );
}

#[test]
fn webhooks() {
    for bad in [
        "ftp://example.com/x",
        "example.com/hook",
        "/hook",
        "http://",
        "https://exa mple.com/",
        "http://h/#frag",
    ] {
        let text = format!("violation_protocol:\n  action: log\n  alert_webhook: \"{bad}\"\n");
        let e = err_at(&text, 3, "violation_protocol.alert_webhook");
        assert!(matches!(e, PolicyFileError::InvalidValue { .. }), "{e:?}");
    }
    err_at(
        "violation_protocol:\n  alert_webhook: 8080\n",
        2,
        "violation_protocol.alert_webhook",
    );
    assert_eq!(
        validate_webhook("HTTP://Hooks.Example.com:8443/a?b=c"),
        Ok("http://hooks.example.com:8443/a?b=c".to_string())
    );
    // What the sender cannot post to is refused here, with the file's line
    // and key, not when the run starts.
    for bad in [
        "https://hooks.example.com/",
        "http://user:pw@h/",
        "http://exa mple/x",
        "http://:80/x",
        "http://[::1/x",
    ] {
        assert!(validate_webhook(bad).is_err(), "{bad}");
    }
}

#[test]
fn syntax_errors_name_the_line() {
    // A duplicate key: its full key, its line and the first one's, and
    // none of the parser's own advice.
    let e = err_at(
        "constraints:\n  pids: 1\n  pids: 2\n",
        3,
        "constraints.pids",
    );
    assert!(
        e.to_string()
            .ends_with("constraints.pids: duplicate key `pids` (first at line 2)"),
        "{e}"
    );
    let e = err_at(
        "constraints:\n  pids: 1\nviolation_protocol: {action: log}\nconstraints:\n  cpu: 1\n",
        4,
        "constraints",
    );
    assert!(e.to_string().contains("(first at line 1)"), "{e}");
    let e = err_at(
        "credentials:\n  - {name: A, env: B, hosts: [a.com]}\n  - name: K\n    env: A\n    hosts: [a.com]\n    env: C\n",
        6,
        "credentials[1].env",
    );
    assert!(e.to_string().contains("(first at line 4)"), "{e}");
    assert!(!e.to_string().contains("DuplicateKeyPolicy"), "{e}");
    err_at(
        "constraints:\n  network: {allow_domains: [a.com], allow_domains: [b.com]}\n",
        2,
        "constraints.network.allow_domains",
    );
    // The wrong shape, in the file's words.
    for (text, line, key, says) in [
        (
            "constraints:\n  network:\n    allow_domains: a.com\n",
            3,
            "constraints.network.allow_domains",
            "expected a list",
        ),
        ("constraints: 5\n", 1, "constraints", "expected a mapping"),
        (
            "constraints:\n  pids: [1]\n",
            2,
            "constraints.pids",
            "expected a single value (a number or a string), got a list",
        ),
        (
            "credentials:\n  - {env: A, hosts: [a.com]}\n",
            2,
            "credentials[0]",
            "missing key `name`",
        ),
        // Not the parser's advice (from_str_multiple, "configured policy").
        (
            "constraints:\n  cpu: .inf\n",
            2,
            "constraints.cpu",
            "expected a finite number",
        ),
    ] {
        let e = err_at(text, line, key);
        let msg = e.to_string();
        assert!(msg.contains(says), "{msg}");
        assert!(
            !msg.contains("sequence start") && !msg.contains("mapping start"),
            "{msg}"
        );
    }
    let e = p("constraints:\n  pids: [1\n").unwrap_err();
    assert!(matches!(e, PolicyFileError::Syntax { .. }), "{e:?}");
    assert!(e.line().is_some_and(|l| l >= 2), "{e}");
    let e = err_at("- 1\n- 2\n", 1, "(top level)");
    assert!(matches!(e, PolicyFileError::Syntax { .. }), "{e:?}");
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "constraints: {pids: 0}\n").unwrap();
    let e = load(&path).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(e.line(), Some(1));
    let missing = dir.path().join("missing.yaml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, PolicyFileError::Read { .. }), "{e:?}");
    std::fs::write(&path, b"constraints: {pids: \xff}\n").unwrap();
    assert!(matches!(load(&path), Err(PolicyFileError::Read { .. })));
    std::fs::write(&path, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
    assert!(matches!(load(&path), Err(PolicyFileError::TooLarge { .. })));
}

#[test]
fn defaults_without_file_or_flags() {
    let e = resolve(None, &FlagOverrides::default());
    assert_eq!(e, EffectivePolicy::default());
    assert_eq!(e.level, SecurityLevel::Standard);
    assert_eq!(e.network.default_policy, DefaultPolicy::Deny);
    assert_eq!(e.violation_action, ViolationAction::Terminate);
    assert_eq!(e.max_runtime, None);
}

#[test]
fn precedence_defaults_file_flags() {
    let file = p(SEED).unwrap();
    // File over defaults.
    let e = resolve(Some(&file), &FlagOverrides::default());
    assert_eq!(e.policy_file.as_deref(), Some(Path::new("test.yaml")));
    assert_eq!(e.level, SecurityLevel::Strict);
    assert_eq!(e.max_runtime, Some(Duration::from_secs(300)));
    assert_eq!(e.max_output_lines, Some(10000));
    assert_eq!(e.network.max_requests, Some(100));
    assert_eq!(e.memory, Some(512 << 20));
    assert_eq!(e.violation_action, ViolationAction::Log);
    // Flags over the file, only where given; 0 turns a file cap off.
    let flags = FlagOverrides {
        max_runtime: Some(Duration::from_secs(10)),
        max_output_lines: Some(0),
        max_output_bytes: None,
        max_requests: Some(7),
    };
    let e = resolve(Some(&file), &flags);
    assert_eq!(e.max_runtime, Some(Duration::from_secs(10)));
    assert_eq!(e.max_output_lines, None, "--max-output-lines 0 = no cap");
    assert_eq!(e.max_output_bytes, Some(50 << 20), "not given: the file's");
    assert_eq!(e.network.max_requests, Some(7));
    assert_eq!(e.pids, Some(256));
    // Flags over defaults.
    let e = resolve(None, &flags);
    assert_eq!(e.max_runtime, Some(Duration::from_secs(10)));
    assert_eq!(e.network.max_requests, Some(7));
    // A file 0 is "no cap" too.
    let zero = p("constraints: {max_runtime: 0, max_output_bytes: 0}\n").unwrap();
    let e = resolve(Some(&zero), &FlagOverrides::default());
    assert_eq!((e.max_runtime, e.max_output_bytes), (None, None));
}

#[test]
fn apply_to_run_policy() {
    let file = p(SEED).unwrap();
    let flags = RunPolicy {
        max_output_lines: Some(5),
        kill_grace: Duration::from_secs(7),
        quiet: true,
        ..RunPolicy::default()
    };
    let run = apply(&file, &flags);
    assert_eq!(run.max_runtime, Some(Duration::from_secs(300)));
    assert_eq!(run.max_output_lines, Some(5));
    assert_eq!(run.max_output_bytes, Some(50 << 20));
    assert_eq!(run.max_requests, Some(100));
    assert_eq!(run.kill_grace, Duration::from_secs(7));
    assert!(run.quiet);
    assert!(run.record_session);
    // An empty file changes nothing.
    let empty = p("").unwrap();
    assert_eq!(apply(&empty, &flags), flags);
}

#[test]
fn document_round_trips_through_yaml_and_json() {
    let file = p(SEED).unwrap();
    let flags = FlagOverrides {
        max_runtime: Some(Duration::from_millis(1500)),
        ..FlagOverrides::default()
    };
    let eff = resolve(Some(&file), &flags);
    let yaml = serde_saphyr::to_string(&eff.document()).unwrap();
    let back = resolve(Some(&p(&yaml).unwrap()), &FlagOverrides::default());
    assert_eq!(
        EffectivePolicy {
            policy_file: None,
            ..back
        },
        EffectivePolicy {
            policy_file: None,
            ..eff.clone()
        },
        "{yaml}"
    );
    let json = serde_json::to_value(eff.document()).unwrap();
    assert_eq!(json["constraints"]["max_runtime"], serde_json::json!(1.5));
    assert_eq!(
        json["constraints"]["memory"],
        serde_json::json!(512u64 << 20)
    );
    assert_eq!(
        json["constraints"]["network"]["allow_domains"][1],
        serde_json::json!("*.example.com")
    );
    assert_eq!(
        json["security_context"]["user"],
        serde_json::json!("nobody")
    );
    // JSON is YAML: it reads back too.
    let text = serde_json::to_string(&eff.document()).unwrap();
    let back = resolve(Some(&p(&text).unwrap()), &FlagOverrides::default());
    assert_eq!(back.network, eff.network);
    assert_eq!(back.max_runtime, eff.max_runtime);
    // Defaults print nulls and read back as defaults.
    let yaml = serde_saphyr::to_string(&EffectivePolicy::default().document()).unwrap();
    let back = resolve(Some(&p(&yaml).unwrap()), &FlagOverrides::default());
    assert_eq!(
        EffectivePolicy {
            policy_file: None,
            ..back
        },
        EffectivePolicy::default(),
        "{yaml}"
    );
}

#[test]
fn key_paths() {
    assert_eq!(key_of("constraints.pids.value", false), "constraints.pids");
    assert_eq!(key_of("constraints.?", false), "constraints");
    assert_eq!(key_of(".", false), "(top level)");
    assert_eq!(key_of("?", false), "(top level)");
    assert_eq!(
        key_of("credentials[0].value.hosts.value[1].value", false),
        "credentials[0].hosts[1]"
    );
    // An unknown key keeps its name, even `value`.
    assert_eq!(
        key_of("credentials[0].value.value", true),
        "credentials[0].value"
    );
    assert_eq!(key_of("constraints.bogus", true), "constraints.bogus");
    assert_eq!(
        strip_location("invalid u64 at line 2, column 9"),
        "invalid u64"
    );
}

const TLS_AND_CREDENTIALS: &str = r#"
constraints:
  network:
    allow_domains: [api.openai.com]
    upstream_ca: [ca.pem, /etc/extra-ca.pem]
    resolve: ["api.openai.com:443:127.0.0.1"]
    connect_ports: [443, 8443, 443]
    tls_passthrough: ["*.pinned.example"]
    prices: my-prices.yaml
    requests:
      - domain: api.openai.com
        methods: [post, GET]
        paths: [/v1/]
credentials:
  - name: OPENAI_API_KEY
    env: REAL_OPENAI_KEY
    hosts: [api.openai.com]
  - name: OTHER
    file: secrets/other.txt
    hosts: ["*.example.com"]
"#;

#[test]
fn tls_requests_and_credentials_parse() {
    let f = parse(TLS_AND_CREDENTIALS, Path::new("/etc/vallignus/policy.yaml")).unwrap();
    let n = f.constraints.network.as_ref().unwrap();
    assert_eq!(
        n.proxy.upstream_ca,
        [
            PathBuf::from("/etc/vallignus/ca.pem"),
            PathBuf::from("/etc/extra-ca.pem")
        ]
    );
    assert_eq!(n.proxy.tls_passthrough[0].to_string(), "*.pinned.example");
    assert_eq!(n.proxy.resolve, ["api.openai.com:443:127.0.0.1"]);
    assert_eq!(n.proxy.connect_ports, [443, 8443]);
    assert_eq!(
        n.proxy.prices.as_deref(),
        Some(Path::new("/etc/vallignus/my-prices.yaml"))
    );
    assert_eq!(n.proxy.requests.len(), 1);
    assert_eq!(n.proxy.requests[0].methods, ["POST", "GET"]);
    assert_eq!(n.proxy.requests[0].paths, ["/v1/"]);
    assert_eq!(f.credentials.len(), 2);
    assert_eq!(f.credentials[0].name, "OPENAI_API_KEY");
    let other = f.credentials[1].info();
    assert_eq!(other.hosts, ["*.example.com"]);
    assert!(
        other.source.contains("/etc/vallignus/secrets/other.txt"),
        "{}",
        other.source
    );
    // policy show prints them, never a value.
    let doc = resolve(Some(&f), &FlagOverrides::default()).document();
    let yaml = serde_json::to_string(&doc).unwrap();
    assert!(yaml.contains("OPENAI_API_KEY") && yaml.contains("REAL_OPENAI_KEY"));
    assert!(yaml.contains("/v1/") && yaml.contains("*.pinned.example"));
}

#[test]
fn bad_request_rules_and_credentials_are_named() {
    err_at(
        "constraints:\n  network:\n    requests:\n      - domain: a.com\n        methods: [\"GE T\"]\n",
        5,
        "constraints.network.requests[0].methods[0]",
    );
    err_at(
        "constraints:\n  network:\n    requests:\n      - domain: a.com\n        paths: [v1]\n",
        5,
        "constraints.network.requests[0].paths[0]",
    );
    err_at(
        "constraints:\n  network:\n    tls_passthrough: [\"a..b\"]\n",
        3,
        "constraints.network.tls_passthrough[0]",
    );
    err_at(
        "constraints:\n  network:\n    resolve: [\"a.test:443\"]\n",
        3,
        "constraints.network.resolve[0]",
    );
    for bad in ["0", "65536", "\"443\"", "-1"] {
        err_at(
            &format!("constraints:\n  network:\n    connect_ports: [{bad}]\n"),
            3,
            "constraints.network.connect_ports[0]",
        );
    }
    // Every credentials error names the line and the field at fault.
    let e = err_at(
        "credentials:\n  - name: K\n    hosts: [a.com]\n",
        2,
        "credentials[0]",
    );
    assert!(
        e.to_string().contains("exactly one of `env` and `file`"),
        "{e}"
    );
    let e = err_at(
        "credentials:\n  - {name: K, env: A, hosts: [a.com]}\n  - {name: K, env: B, hosts: [b.com]}\n",
        3,
        "credentials[1].name",
    );
    assert!(
        e.to_string()
            .contains("given twice (first in credentials[0])"),
        "{e}"
    );
    err_at(
        "credentials:\n  - {name: K, env: A, hosts: [a.com], value: x}\n",
        2,
        "credentials[0].value",
    );
    for (text, line, key) in [
        (
            "credentials:\n  - name: OK\n    env: A\n    hosts: [a.com]\n  - name: \"bad name\"\n    env: A\n    hosts: [a.com]\n",
            5,
            "credentials[1].name",
        ),
        (
            "credentials:\n  - name: K\n    env: \"1A\"\n    hosts: [a.com]\n",
            3,
            "credentials[0].env",
        ),
        (
            "credentials:\n  - name: K\n    env: A\n    file: x\n    hosts: [a.com]\n",
            4,
            "credentials[0].file",
        ),
        (
            "credentials:\n  - name: K\n    file: \"\"\n    hosts: [a.com]\n",
            3,
            "credentials[0].file",
        ),
        (
            "credentials:\n  - name: K\n    env: A\n    hosts:\n      - a.com\n      - \"a b\"\n",
            6,
            "credentials[0].hosts[1]",
        ),
        (
            "credentials:\n  - name: K\n    env: A\n    hosts: []\n",
            4,
            "credentials[0].hosts",
        ),
        (
            "credentials:\n  - name: K\n    env: A\n",
            2,
            "credentials[0]",
        ),
        (
            "credentials:\n  - name: K\n    env: [A]\n    hosts: [a.com]\n",
            3,
            "credentials[0].env",
        ),
    ] {
        let e = err_at(text, line, key);
        assert!(e.to_string().contains("credentials entry") || e.to_string().contains("expected"), "{e}");
    }
}

#[test]
fn end_on_pids_max_is_a_boolean() {
    let f = p("constraints:\n  pids: 50\n  end_on_pids_max: true\n").unwrap();
    assert_eq!(f.constraints.end_on_pids_max, Some(true));
    assert!(resolve(Some(&f), &FlagOverrides::default()).end_on_pids_max);
    assert!(!resolve(None, &FlagOverrides::default()).end_on_pids_max);
    err_at(
        "constraints:\n  end_on_pids_max: sometimes\n",
        2,
        "constraints.end_on_pids_max",
    );
}

#[test]
fn a_second_yaml_document_is_named_in_the_file_s_words() {
    let e = p("constraints:\n  pids: 5\n---\nconstraints:\n  pids: 6\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("one YAML document"), "{msg}");
    assert!(!msg.contains("from_str_multiple"), "{msg}");
    assert_eq!(e.line(), Some(4), "{msg}");
}
