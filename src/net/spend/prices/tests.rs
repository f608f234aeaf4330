use super::*;

fn p(s: &str) -> PicoUsd {
    parse_price_per_mtok(s).unwrap()
}

fn table(yaml: &str) -> PriceTable {
    PriceTable::parse(yaml, Path::new("test.yaml")).unwrap()
}

fn err(yaml: &str) -> PriceFileError {
    PriceTable::parse(yaml, Path::new("test.yaml")).unwrap_err()
}

#[test]
fn shipped_table_parses_and_prices_current_models() {
    let t = PriceTable::shipped().unwrap();
    let m = t.lookup(Provider::OpenAi, "gpt-4o").unwrap();
    assert_eq!(m.rule, Rule::Pattern("gpt-4o"));
    assert_eq!(m.price.input, p("2.50"));
    assert_eq!(m.price.cached_input, p("1.25"));
    assert_eq!(m.price.output, p("10"));
    assert_eq!(m.origin.file, Path::new(SHIPPED_NAME));
    let m = t
        .lookup(Provider::OpenAi, "gpt-4o-mini-2024-07-18")
        .unwrap();
    assert_eq!(m.rule, Rule::Pattern("gpt-4o-mini-20*"));
    // The old snapshot has its own, exact, price.
    let m = t.lookup(Provider::OpenAi, "gpt-4o-2024-05-13").unwrap();
    assert_eq!(m.price.input, p("5"));
    let m = t
        .lookup(Provider::Anthropic, "claude-sonnet-4-5-20250929")
        .unwrap();
    assert_eq!(m.price.cache_write, p("3.75"));
    assert_eq!(m.price.cached_input, p("0.30"));
    // No default in the shipped table: unknown models are refused.
    assert_eq!(
        t.lookup(Provider::OpenAi, "gpt-5-pro"),
        Err(UnknownModel {
            provider: Provider::OpenAi,
            model: "gpt-5-pro".into()
        })
    );
    assert!(t.lookup(Provider::Anthropic, "gpt-4o").is_err());
    assert!(SHIPPED_YAML.contains("MUST CHECK"));
}

#[test]
fn longest_match_wins_and_exact_beats_prefix() {
    let t = table(
        "openai:\n  models:\n    \"gpt-4o*\": {input: 1, output: 1}\n    gpt-4o-mini*: {input: 2, output: 2}\n    gpt-4o-mini-tts: {input: 3, output: 3}\n    gpt-4o-mini-tts*: {input: 4, output: 4}\n    g*: {input: 5, output: 5}\n",
    );
    let rule = |m: &str| t.lookup(Provider::OpenAi, m).map(|x| x.rule.to_string());
    assert_eq!(rule("gpt-4o").unwrap(), "gpt-4o*");
    assert_eq!(rule("gpt-4o-2024-08-06").unwrap(), "gpt-4o*");
    assert_eq!(rule("gpt-4o-mini").unwrap(), "gpt-4o-mini*");
    assert_eq!(rule("gpt-4o-mini-tts").unwrap(), "gpt-4o-mini-tts");
    assert_eq!(rule("gpt-4o-mini-tts-1").unwrap(), "gpt-4o-mini-tts*");
    assert_eq!(rule("gpt-3.5").unwrap(), "g*");
    assert!(rule("o3").is_err());
    // Case-sensitive.
    assert!(rule("GPT-4o").is_err());
    // An exact pattern never matches as a prefix.
    let t = table("openai:\n  models:\n    gpt-4o: {input: 1, output: 1}\n");
    assert!(t.lookup(Provider::OpenAi, "gpt-4o-mini").is_err());
}

#[test]
fn defaults_fill_unknown_models() {
    let mut t = table(
        "anthropic:\n  models:\n    claude-x: {input: 1, output: 2}\n  default: {input: \"9\", output: \"9\"}\n",
    );
    let m = t.lookup(Provider::Anthropic, "claude-y").unwrap();
    assert_eq!(m.rule, Rule::Default);
    assert_eq!(m.origin.line, 4);
    assert!(t.lookup(Provider::OpenAi, "x").is_err());
    let price = ModelPrice {
        input: p("1"),
        cached_input: p("1"),
        cache_write: p("1"),
        output: p("1"),
    };
    let origin = Origin {
        file: "policy.yaml".into(),
        line: 7,
    };
    t.set_default(Provider::OpenAi, price, origin.clone());
    let m = t.lookup(Provider::OpenAi, "x").unwrap();
    assert_eq!((m.rule, m.price, m.origin), (Rule::Default, price, &origin));
}

#[test]
fn optional_prices_default_to_input() {
    let t = table("openai:\n  models:\n    m: {input: \"0.5\", output: 2}\n");
    let m = t.lookup(Provider::OpenAi, "m").unwrap().price;
    assert_eq!(m.cached_input, p("0.5"));
    assert_eq!(m.cache_write, p("0.5"));
    assert_eq!(m.output, p("2"));
}

#[test]
fn user_file_overrides_whole_entries() {
    let mut t = PriceTable::shipped().unwrap();
    let user = table(
        "openai:\n  models:\n    gpt-4o: {input: \"3\", output: \"12\"}\n    my-model*: {input: 1, output: 1}\n  default: {input: 100, output: 100}\n",
    );
    t.overlay(user);
    let m = t.lookup(Provider::OpenAi, "gpt-4o").unwrap();
    assert_eq!(m.price.input, p("3"));
    // Replaced whole: cached input now follows the user's input price.
    assert_eq!(m.price.cached_input, p("3"));
    assert_eq!(m.origin.file, Path::new("test.yaml"));
    assert_eq!(
        t.lookup(Provider::OpenAi, "my-model-7").unwrap().rule,
        Rule::Pattern("my-model*")
    );
    // Untouched entries stay.
    assert_eq!(
        t.lookup(Provider::OpenAi, "gpt-4o-mini")
            .unwrap()
            .price
            .input,
        p("0.15")
    );
    assert_eq!(
        t.lookup(Provider::OpenAi, "unknown").unwrap().rule,
        Rule::Default
    );
    assert!(t.lookup(Provider::Anthropic, "unknown").is_err());
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.yaml");
    std::fs::write(
        &path,
        "anthropic:\n  models:\n    c: {input: 1, output: x}\n",
    )
    .unwrap();
    let e = PriceTable::shipped_with(Some(&path)).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(e.line(), Some(3));
    std::fs::write(&path, "# nothing\n").unwrap();
    assert_eq!(
        PriceTable::shipped_with(Some(&path)).unwrap(),
        PriceTable::shipped().unwrap()
    );
    let missing = dir.path().join("missing.yaml");
    assert!(matches!(
        PriceTable::load(&missing),
        Err(PriceFileError::Read { .. })
    ));
}

#[test]
fn errors_name_the_line_model_and_field() {
    let e = err("openai:\n  models:\n    gpt-4o:\n      input: \"2.50\"\n      output: \"1e3\"\n");
    match &e {
        PriceFileError::Price {
            line,
            provider,
            model,
            field,
            ..
        } => {
            assert_eq!(
                (*line, *provider, model.as_str(), *field),
                (5, Provider::OpenAi, "gpt-4o", "output")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("test.yaml, line 5"), "{e}");

    let e = err("openai:\n  models:\n    m: {input: \"0.0000001\", output: 1}\n");
    assert!(e.to_string().contains("more than 6 decimal places"), "{e}");
    assert_eq!(e.line(), Some(3));

    let e = err("anthropic:\n  models:\n    c:\n      output: 1\n");
    assert!(
        matches!(
            &e,
            PriceFileError::Price {
                field: "input",
                line: 4,
                ..
            }
        ),
        "{e:?}"
    );

    let e = err("openai:\n  models:\n    \"gpt*4o\": {input: 1, output: 1}\n");
    assert!(
        matches!(&e, PriceFileError::Pattern { line: 3, .. }),
        "{e:?}"
    );
    let e = err("openai:\n  models:\n    \"*\": {input: 1, output: 1}\n");
    assert!(matches!(&e, PriceFileError::Pattern { .. }), "{e:?}");
    let e = err("openai:\n  models:\n    \"gpt 4\": {input: 1, output: 1}\n");
    assert!(matches!(&e, PriceFileError::Pattern { .. }), "{e:?}");

    let e = err("openai:\n  models:\n    m: {input: -1, output: 1}\n");
    assert!(
        matches!(&e, PriceFileError::Price { field: "input", .. }),
        "{e:?}"
    );
    let e = err("openai:\n  models:\n    m: {input: true, output: 1}\n");
    assert!(
        matches!(&e, PriceFileError::Price { field: "input", .. }),
        "{e:?}"
    );

    let e = err("openai:\n  models:\n    m: {input: 1, output: 1, cache_read: 1}\n");
    assert!(
        matches!(&e, PriceFileError::Syntax { line: 3, .. }),
        "{e:?}"
    );
    let e = err("google:\n  models: {}\n");
    assert!(
        matches!(&e, PriceFileError::Syntax { line: 1, .. }),
        "{e:?}"
    );
    let e = err("openai:\n  models:\n    m: {input: 1, output: 1}\n    m: {input: 2, output: 2}\n");
    assert!(
        matches!(&e, PriceFileError::Syntax { line: 4, .. }),
        "{e:?}"
    );
    let e = err("openai: [1, 2]\n");
    assert!(matches!(&e, PriceFileError::Syntax { .. }), "{e:?}");
}

#[test]
fn empty_file_is_an_empty_table() {
    assert_eq!(table(""), PriceTable::default());
    assert_eq!(table("# only a comment\n---\n"), PriceTable::default());
}

#[test]
fn cost_uses_each_price() {
    let price = ModelPrice {
        input: p("3"),
        cached_input: p("0.30"),
        cache_write: p("3.75"),
        output: p("15"),
    };
    let usage = Usage {
        input: 1000,
        cached_input: 2000,
        cache_write: 100,
        output: 500,
    };
    // 0.003 + 0.0006 + 0.000375 + 0.0075
    assert_eq!(price.cost(&usage), PicoUsd::parse_usd("0.011475").unwrap());
    assert_eq!(price.max_input(), p("3.75"));
}
