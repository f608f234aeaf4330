use super::*;

#[test]
fn plan_prices_estimates_and_rewrites() {
    let prices = PriceTable::shipped().unwrap();
    let body = br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":1000,"messages":[]}"#;
    let plan = plan(&prices, DEFAULT_MAX_TOKENS, Endpoint::OpenAiChat, body).unwrap();
    assert_eq!(plan.price.rule.to_string(), "gpt-4o-mini");
    // 1000 × $0.60/M + ceil(69 / 4) × $0.15/M
    assert_eq!(body.len(), 69);
    assert_eq!(
        plan.estimate,
        PicoUsd::parse_usd("0.0006")
            .unwrap()
            .saturating_add(PicoUsd::parse_usd("0.0000027").unwrap())
    );
    let rewritten = plan.body.unwrap();
    assert!(rewritten.starts_with(br#"{"stream_options":{"include_usage":true},"#));

    let e = super::plan(
        &prices,
        DEFAULT_MAX_TOKENS,
        Endpoint::OpenAiChat,
        br#"{"model":"llama-3"}"#,
    )
    .unwrap_err();
    assert!(matches!(e, SpendError::UnknownModel(_)), "{e}");
    assert!(e.to_string().contains("\"llama-3\""), "{e}");
    let e = super::plan(&prices, 1, Endpoint::AnthropicMessages, b"{").unwrap_err();
    assert!(matches!(e, SpendError::Request(_)), "{e}");
}

/// The whole path for one streaming Anthropic request.
#[test]
fn reserve_stream_settle() {
    let prices = PriceTable::shipped().unwrap();
    let ledger = Ledger::new(PicoUsd::parse_usd("1").unwrap());
    let body = br#"{"model":"claude-haiku-4-5","max_tokens":100,"stream":true,"messages":[]}"#;
    let plan = plan(
        &prices,
        DEFAULT_MAX_TOKENS,
        Endpoint::AnthropicMessages,
        body,
    )
    .unwrap();
    assert_eq!(plan.body, None);
    let reservation = ledger.reserve(plan.estimate).unwrap();
    let mut meter = ResponseMeter::new(Endpoint::AnthropicMessages, true);
    for chunk in [
        &b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n"[..],
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n",
        b"\n",
    ] {
        meter.feed(chunk);
    }
    let usage = meter.finish().unwrap().usage;
    let cost = plan.price.price.cost(&usage);
    // 10 × $1/M + 20 × $5/M
    assert_eq!(cost, PicoUsd::parse_usd("0.00011").unwrap());
    let s = ledger.settle(reservation, cost);
    assert_eq!(s.spent, cost);
    assert_eq!(ledger.balance().reserved, PicoUsd::ZERO);
}

#[test]
fn plain_meter_bounds_its_buffer() {
    let mut meter = ResponseMeter::new(Endpoint::OpenAiChat, false);
    meter.feed(br#"{"model":"m","usage":{"prompt_tokens":3,"#);
    meter.feed(br#""completion_tokens":4}}"#);
    assert_eq!(meter.finish().unwrap().usage.output, 4);

    let mut meter = ResponseMeter::new(Endpoint::OpenAiChat, false);
    let filler = vec![b' '; MAX_PLAIN_BODY_BYTES];
    meter.feed(b"{\"usage\":{\"prompt_tokens\":1}");
    meter.feed(&filler);
    meter.feed(b"}");
    assert_eq!(meter.finish(), None);
    // A cut body has no usage.
    let mut meter = ResponseMeter::new(Endpoint::OpenAiChat, false);
    meter.feed(br#"{"usage":{"prompt_tokens":3"#);
    assert_eq!(meter.finish(), None);
}

#[test]
fn a_request_without_an_output_cap_gets_the_reserved_one() {
    let table = PriceTable::shipped().unwrap();
    let body = |b: &Option<Vec<u8>>| -> serde_json::Value {
        serde_json::from_slice(b.as_deref().unwrap()).unwrap()
    };
    let chat = br#"{"model":"gpt-4o-mini","messages":[]}"#;
    let p = plan(&table, 1000, Endpoint::OpenAiChat, chat).unwrap();
    assert_eq!(body(&p.body)["max_completion_tokens"], 1000);
    assert_eq!(body(&p.body)["messages"], serde_json::json!([]));

    let stream = br#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let p = plan(&table, 1000, Endpoint::OpenAiChat, stream).unwrap();
    assert_eq!(body(&p.body)["max_completion_tokens"], 1000);
    assert_eq!(body(&p.body)["stream_options"]["include_usage"], true);

    let responses = br#"{"model":"gpt-4o-mini","input":"hi"}"#;
    let p = plan(&table, 1000, Endpoint::OpenAiResponses, responses).unwrap();
    assert_eq!(body(&p.body)["max_output_tokens"], 1000);

    // A request with its own cap is sent as it is.
    let capped = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#;
    assert_eq!(
        plan(&table, 1000, Endpoint::OpenAiChat, capped)
            .unwrap()
            .body,
        None
    );
}
