use super::*;
use crate::net::spend::money::parse_price_per_mtok;

fn p(s: &str) -> PicoUsd {
    parse_price_per_mtok(s).unwrap()
}

#[test]
fn endpoints_by_exact_path() {
    assert_eq!(
        Endpoint::from_path("/v1/chat/completions"),
        Some(Endpoint::OpenAiChat)
    );
    assert_eq!(
        Endpoint::from_path("/v1/responses?x=1"),
        Some(Endpoint::OpenAiResponses)
    );
    assert_eq!(
        Endpoint::from_path("/v1/messages/"),
        Some(Endpoint::AnthropicMessages)
    );
    for other in [
        "/v1/messages/count_tokens",
        "/v1/threads/t1/messages",
        "/v1/models",
        "/v1/responses/resp_1",
        "/",
    ] {
        assert_eq!(Endpoint::from_path(other), None, "{other}");
    }
    assert_eq!(Endpoint::OpenAiResponses.provider(), Provider::OpenAi);
    assert_eq!(Endpoint::AnthropicMessages.provider(), Provider::Anthropic);
}

#[test]
fn requests_parse_model_stream_and_caps() {
    let r = MeteredRequest::parse(
        Endpoint::OpenAiChat,
        br#"{"model":"gpt-4o","stream":true,"max_tokens":100,"max_completion_tokens":50,"n":3}"#,
    )
    .unwrap();
    assert_eq!(r.model, "gpt-4o");
    assert!(r.stream);
    assert_eq!(r.max_output_tokens, Some(50));
    assert_eq!(r.choices, 3);
    let r = MeteredRequest::parse(
        Endpoint::OpenAiResponses,
        br#"{"model":"o3","input":"hi","max_output_tokens":7,"max_tokens":99,"n":5}"#,
    )
    .unwrap();
    assert_eq!(
        (r.max_output_tokens, r.choices, r.stream),
        (Some(7), 1, false)
    );
    let r = MeteredRequest::parse(
        Endpoint::AnthropicMessages,
        br#"{"model":"claude-haiku-4-5","max_tokens":1024,"stream":false,"messages":[]}"#,
    )
    .unwrap();
    assert_eq!(r.max_output_tokens, Some(1024));
    let r =
        MeteredRequest::parse(Endpoint::OpenAiChat, br#"{"model":"m","max_tokens":null}"#).unwrap();
    assert_eq!(r.max_output_tokens, None);
    assert_eq!(r.body_bytes, 31);
}

#[test]
fn unpriceable_requests_are_refused() {
    let e = |body: &[u8]| MeteredRequest::parse(Endpoint::OpenAiChat, body).unwrap_err();
    assert!(matches!(e(b"not json"), RequestError::NotJson { .. }));
    assert!(matches!(e(b"[1]"), RequestError::NotJson { .. }));
    assert!(matches!(e(b"{}"), RequestError::NoModel { .. }));
    assert!(matches!(
        e(br#"{"model":""}"#),
        RequestError::NoModel { .. }
    ));
    assert!(matches!(e(br#"{"model":5}"#), RequestError::NoModel { .. }));
    let bad = e(br#"{"model":"gpt-4o","max_tokens":-1}"#);
    assert_eq!(
        bad,
        RequestError::BadField {
            endpoint: Endpoint::OpenAiChat,
            model: "gpt-4o".into(),
            field: "max_tokens",
            value: "-1".into()
        }
    );
    assert!(bad.to_string().contains("\"gpt-4o\""), "{bad}");
    assert!(matches!(
        e(br#"{"model":"m","max_tokens":"100"}"#),
        RequestError::BadField { .. }
    ));
    assert!(matches!(
        e(br#"{"model":"m","n":1.5}"#),
        RequestError::BadField { field: "n", .. }
    ));
    // Duplicate top-level keys could be read differently upstream.
    let dup = e(br#"{"model":"gpt-4o-mini","model":"o3"}"#);
    assert!(dup.to_string().contains("duplicate key"), "{dup}");
}

#[test]
fn estimate_is_output_cap_plus_input_bytes() {
    let price = ModelPrice {
        input: p("2"),
        cached_input: p("1"),
        cache_write: p("2.5"),
        output: p("10"),
    };
    let body = br#"{"model":"m","max_tokens":1000}"#; // 31 bytes → 8 tokens
    let r = MeteredRequest::parse(Endpoint::AnthropicMessages, body).unwrap();
    // 1000 × $10/M + 8 × $2.5/M (the dearest input price)
    assert_eq!(
        estimate(&r, &price, 5),
        PicoUsd::parse_usd("0.01002").unwrap()
    );
    // No cap: the policy default; n multiplies the output.
    let r = MeteredRequest::parse(Endpoint::OpenAiChat, br#"{"model":"m","n":2}"#).unwrap();
    assert_eq!(
        estimate(&r, &price, 100),
        p("10").times(200).saturating_add(p("2.5").times(5))
    );
    // Absurd caps saturate instead of wrapping.
    let r = MeteredRequest::parse(
        Endpoint::OpenAiChat,
        br#"{"model":"m","max_tokens":18446744073709551615,"n":2}"#,
    )
    .unwrap();
    assert_eq!(estimate(&r, &price, 1), PicoUsd::MAX);
}

#[test]
fn include_usage_is_added_to_streaming_chat_only() {
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let out = with_include_usage(Endpoint::OpenAiChat, body)
        .unwrap()
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    );
    // Leading whitespace and pretty-printing survive.
    let out = with_include_usage(
        Endpoint::OpenAiChat,
        b" {\n \"stream\": true, \"model\": \"m\"\n}",
    )
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
    assert!(out.starts_with(b" {\"stream_options\""));

    // Existing options are kept, include_usage forced on.
    for options in [r#"{"include_usage":false,"other":1}"#, r#"{}"#, r#"null"#] {
        let body = format!(r#"{{"model":"m","stream":true,"stream_options":{options}}}"#);
        let out = with_include_usage(Endpoint::OpenAiChat, body.as_bytes())
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"]["include_usage"],
            Value::Bool(true),
            "{options}"
        );
        assert_eq!(v["model"], "m");
        if options.contains("other") {
            assert_eq!(v["stream_options"]["other"], 1);
        }
    }
    // Nothing to do.
    let already = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    assert_eq!(with_include_usage(Endpoint::OpenAiChat, already), Ok(None));
    let plain = br#"{"model":"m","stream":false}"#;
    assert_eq!(with_include_usage(Endpoint::OpenAiChat, plain), Ok(None));
    let responses = br#"{"model":"m","stream":true}"#;
    assert_eq!(
        with_include_usage(Endpoint::OpenAiResponses, responses),
        Ok(None)
    );
    assert_eq!(
        with_include_usage(Endpoint::AnthropicMessages, responses),
        Ok(None)
    );
    assert!(with_include_usage(Endpoint::OpenAiChat, b"{").is_err());
}

#[test]
fn plain_openai_chat_usage() {
    let body = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06",
        "choices":[{"index":0,"message":{"role":"assistant","content":"hi \"usage\""}}],
        "usage":{"prompt_tokens":1200,"completion_tokens":30,"total_tokens":1230,
          "prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},
          "completion_tokens_details":{"reasoning_tokens":10}}}"#;
    let m = plain_usage(Endpoint::OpenAiChat, body).unwrap().unwrap();
    assert_eq!(m.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        m.usage,
        Usage {
            input: 176,
            cached_input: 1024,
            cache_write: 0,
            output: 30
        }
    );
    // No details, null details.
    let body =
        br#"{"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":null}}"#;
    let m = plain_usage(Endpoint::OpenAiChat, body).unwrap().unwrap();
    assert_eq!(
        (m.usage.input, m.usage.cached_input, m.usage.output),
        (5, 0, 2)
    );
    // Cached larger than prompt (nonsense) does not underflow.
    let body = br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}}"#;
    let m = plain_usage(Endpoint::OpenAiChat, body).unwrap().unwrap();
    assert_eq!((m.usage.input, m.usage.cached_input), (0, 5));
    // An error body: no usage.
    let body = br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#;
    assert_eq!(plain_usage(Endpoint::OpenAiChat, body), Ok(None));
    assert!(plain_usage(Endpoint::OpenAiChat, b"<html>").is_err());
    assert!(plain_usage(Endpoint::OpenAiChat, br#"{"usage":{"prompt_tokens":-1}}"#).is_err());
}

#[test]
fn plain_openai_responses_usage() {
    let body = br#"{"id":"resp_1","object":"response","model":"o3-2025-04-16","output":[],
        "usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":100},
          "output_tokens":50,"output_tokens_details":{"reasoning_tokens":40},"total_tokens":350}}"#;
    let m = plain_usage(Endpoint::OpenAiResponses, body)
        .unwrap()
        .unwrap();
    assert_eq!(m.model.as_deref(), Some("o3-2025-04-16"));
    assert_eq!(
        m.usage,
        Usage {
            input: 200,
            cached_input: 100,
            cache_write: 0,
            output: 50
        }
    );
}

#[test]
fn plain_anthropic_usage() {
    let body =
        br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
        "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",
        "usage":{"input_tokens":12,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,
          "output_tokens":40,"service_tier":"standard"}}"#;
    let m = plain_usage(Endpoint::AnthropicMessages, body)
        .unwrap()
        .unwrap();
    assert_eq!(
        m.usage,
        Usage {
            input: 12,
            cached_input: 3000,
            cache_write: 200,
            output: 40
        }
    );
    let body =
        br#"{"usage":{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":null}}"#;
    let m = plain_usage(Endpoint::AnthropicMessages, body)
        .unwrap()
        .unwrap();
    assert_eq!(m.usage.cache_write, 0);
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(plain_usage(Endpoint::AnthropicMessages, body), Ok(None));
}
