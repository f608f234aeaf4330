use super::*;

/// Feed `body` in every way that matters: whole, byte by byte, and in
/// chunks of a few sizes; all must agree.
fn stream_usage(endpoint: Endpoint, body: &[u8]) -> Option<Metered> {
    let mut results = Vec::new();
    for size in [body.len().max(1), 1, 2, 3, 7, 64] {
        let mut s = StreamUsage::new(endpoint);
        for chunk in body.chunks(size) {
            s.feed(chunk);
            // Empty chunks (e.g. between `\r` and `\n`) change nothing.
            s.feed(b"");
        }
        results.push(s.finish());
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    results.remove(0)
}

fn events(body: &[u8], chunk: usize) -> Vec<(Option<String>, String)> {
    let mut parser = SseParser::new(wants_all);
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        parser.feed(c, &mut |name, data| {
            out.push((
                name.map(str::to_string),
                String::from_utf8(data.to_vec()).unwrap(),
            ))
        });
    }
    out
}

#[test]
fn sse_lines_fields_and_line_ends() {
    let body = b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\rdata\r\rdata: last\n\nid: 5\nretry: 1\n\ndata: unterminated";
    for chunk in [1, 2, 5, body.len()] {
        assert_eq!(
            events(body, chunk),
            vec![
                (Some("a".into()), "one\ntwo".into()),
                (None, "x\n".into()),
                (None, "last".into()),
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn sse_caps_memory_and_skips_unwanted_events() {
    fn only_b(name: Option<&str>) -> bool {
        name == Some("b")
    }
    let mut parser = SseParser::with_cap(only_b, 16);
    let mut got = Vec::new();
    let big = "x".repeat(100);
    let body = format!(
        "event: a\ndata: {big}\n\nevent: b\ndata: {big}\n\nevent: b\ndata: 0123456789\ndata: 0123456789\n\nevent: b\ndata: ok\n\n"
    );
    parser.feed(body.as_bytes(), &mut |_, d| got.push(d.to_vec()));
    assert_eq!(got, vec![b"ok".to_vec()]);
    // The unwanted big event is not lost (it was not wanted); the two
    // oversized wanted ones are.
    assert_eq!(parser.lost_events(), 2);
    assert!(parser.line.capacity() <= 64 && parser.data.capacity() <= 64);
}

const CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":7,\"total_tokens\":107,\"prompt_tokens_details\":{\"cached_tokens\":64}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn openai_chat_stream_final_usage() {
    let m = stream_usage(Endpoint::OpenAiChat, CHAT_STREAM.as_bytes()).unwrap();
    assert_eq!(m.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        m.usage,
        Usage {
            input: 36,
            cached_input: 64,
            cache_write: 0,
            output: 7
        }
    );
    // CRLF framing gives the same.
    let crlf = CHAT_STREAM.replace('\n', "\r\n");
    assert_eq!(
        stream_usage(Endpoint::OpenAiChat, crlf.as_bytes()).unwrap(),
        m
    );
}

#[test]
fn openai_chat_stream_without_usage_or_dropped() {
    // include_usage not set: no usage chunk.
    let no_usage: String = CHAT_STREAM
        .split("\n\n")
        .filter(|e| !e.contains("prompt_tokens"))
        .map(|e| format!("{e}\n\n"))
        .collect();
    assert_eq!(
        stream_usage(Endpoint::OpenAiChat, no_usage.as_bytes()),
        None
    );
    // Dropped in the middle of the usage chunk.
    let cut = CHAT_STREAM.find("\"completion_tokens\"").unwrap();
    assert_eq!(
        stream_usage(Endpoint::OpenAiChat, &CHAT_STREAM.as_bytes()[..cut]),
        None
    );
    // Dropped right before the blank line that ends the usage event.
    let end = CHAT_STREAM.find("}}}\n").unwrap() + 4;
    assert_eq!(
        stream_usage(Endpoint::OpenAiChat, &CHAT_STREAM.as_bytes()[..end]),
        None
    );
    // Dropped after the usage event, before [DONE]: the usage is final.
    assert!(stream_usage(Endpoint::OpenAiChat, &CHAT_STREAM.as_bytes()[..end + 1]).is_some());
    // Garbage is counted, not fatal.
    let mut s = StreamUsage::new(Endpoint::OpenAiChat);
    s.feed(b"data: {\"usage\": nope}\n\n");
    assert_eq!(s.malformed_events(), 1);
    assert_eq!(s.finish(), None);
}

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"model\":\"o3\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"r1\",\"model\":\"o3-2025-04-16\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":128},\"output_tokens\":90,\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":590}}}\n\n",
);

#[test]
fn openai_responses_stream_final_usage() {
    let m = stream_usage(Endpoint::OpenAiResponses, RESPONSES_STREAM.as_bytes()).unwrap();
    assert_eq!(m.model.as_deref(), Some("o3-2025-04-16"));
    assert_eq!(
        m.usage,
        Usage {
            input: 372,
            cached_input: 128,
            cache_write: 0,
            output: 90
        }
    );
    // Without event: lines, the type field decides.
    let bare: String = RESPONSES_STREAM
        .lines()
        .filter(|l| !l.starts_with("event:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        stream_usage(Endpoint::OpenAiResponses, bare.as_bytes()).unwrap(),
        m
    );
    // An incomplete response is billed too.
    let incomplete = RESPONSES_STREAM.replace("response.completed", "response.incomplete");
    assert!(stream_usage(Endpoint::OpenAiResponses, incomplete.as_bytes()).is_some());
    // Dropped before completion.
    let cut = RESPONSES_STREAM.find("event: response.completed").unwrap();
    assert_eq!(
        stream_usage(
            Endpoint::OpenAiResponses,
            &RESPONSES_STREAM.as_bytes()[..cut]
        ),
        None
    );
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_stream_start_plus_cumulative_delta() {
    let m = stream_usage(Endpoint::AnthropicMessages, ANTHROPIC_STREAM.as_bytes()).unwrap();
    assert_eq!(m.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        m.usage,
        Usage {
            input: 25,
            cached_input: 2000,
            cache_write: 1000,
            output: 15
        }
    );
    // Cumulative, not additive: two deltas, the last one wins; a delta that
    // restates input counts replaces them.
    let two = ANTHROPIC_STREAM.replace(
        "event: message_stop",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":30,\"output_tokens\":20}}\n\nevent: message_stop",
    );
    let m = stream_usage(Endpoint::AnthropicMessages, two.as_bytes()).unwrap();
    assert_eq!(
        (m.usage.input, m.usage.output, m.usage.cached_input),
        (30, 20, 2000)
    );
}

#[test]
fn anthropic_stream_dropped_or_failed() {
    // Dropped before message_delta: input known, output not → no usage.
    let cut = ANTHROPIC_STREAM.find("event: message_delta").unwrap();
    assert_eq!(
        stream_usage(
            Endpoint::AnthropicMessages,
            &ANTHROPIC_STREAM.as_bytes()[..cut]
        ),
        None
    );
    // An error event mid-stream.
    let failed = format!(
        "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n",
        &ANTHROPIC_STREAM[..cut]
    );
    assert_eq!(
        stream_usage(Endpoint::AnthropicMessages, failed.as_bytes()),
        None
    );
    // A delta without a start cannot be priced.
    let only_delta = &ANTHROPIC_STREAM[cut..];
    assert_eq!(
        stream_usage(Endpoint::AnthropicMessages, only_delta.as_bytes()),
        None
    );
}

#[test]
fn oversized_usage_event_means_no_usage() {
    let mut s =
        StreamUsage::with_parser(Endpoint::OpenAiResponses, |w| SseParser::with_cap(w, 128));
    s.feed(RESPONSES_STREAM.as_bytes());
    assert_eq!(s.lost_events(), 1);
    assert_eq!(s.finish(), None);
}
