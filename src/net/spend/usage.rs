//! The metered LLM APIs: what a request asks for (model, streaming, output
//! cap), what it is estimated to cost, and the token `usage` a plain JSON
//! response reports. Streaming responses are in [`super::sse`].
//!
//! Invariants:
//! - [`Usage`] counts four disjoint kinds of tokens; every API's report is
//!   normalised into it (OpenAI's `prompt_tokens` *include* cached tokens,
//!   Anthropic's `input_tokens` *exclude* cache reads and writes).
//! - A request whose body is not a JSON object, lacks `model`, or has an
//!   output cap that is not a non-negative integer is refused
//!   ([`RequestError`]): an estimate is never made from a guess the upstream
//!   would not share.
//! - The estimate ([`estimate`]) is `output cap × n × output price +
//!   ceil(body bytes / 4) × dearest input price`. It bounds the output side
//!   (the APIs stop at the cap) but not the input side (a token can be
//!   shorter than 4 bytes); settlement always charges the real usage.
//! - Pure: no I/O.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::money::PicoUsd;
use super::prices::{ModelPrice, Provider};

/// Bytes per token assumed for the input estimate.
pub const BYTES_PER_TOKEN_ESTIMATE: u64 = 4;

/// Tokens by how they are billed. The four fields are disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Input tokens billed at the input price.
    pub input: u64,
    /// Input tokens read from the prompt cache.
    pub cached_input: u64,
    /// Input tokens written to the prompt cache (Anthropic).
    pub cache_write: u64,
    /// Output tokens, reasoning/thinking included.
    pub output: u64,
}

/// A response's usage and the model that answered (if it said).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metered {
    pub usage: Usage,
    pub model: Option<String>,
}

/// A metered API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    OpenAiChat,
    /// `POST /v1/responses`
    OpenAiResponses,
    /// `POST /v1/messages`
    AnthropicMessages,
}

impl Endpoint {
    /// The metered endpoint at `path` (the query is ignored), if any. Only the
    /// exact paths count: `/v1/messages/count_tokens` is free and
    /// `/v1/threads/{id}/messages` is not Anthropic's.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        match path.strip_suffix('/').unwrap_or(path) {
            "/v1/chat/completions" => Some(Endpoint::OpenAiChat),
            "/v1/responses" => Some(Endpoint::OpenAiResponses),
            "/v1/messages" => Some(Endpoint::AnthropicMessages),
            _ => None,
        }
    }

    /// Whose prices apply: the API shape decides, so an OpenAI-compatible
    /// server is priced from the `openai` table.
    pub fn provider(self) -> Provider {
        match self {
            Endpoint::OpenAiChat | Endpoint::OpenAiResponses => Provider::OpenAi,
            Endpoint::AnthropicMessages => Provider::Anthropic,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::OpenAiChat => "openai.chat_completions",
            Endpoint::OpenAiResponses => "openai.responses",
            Endpoint::AnthropicMessages => "anthropic.messages",
        }
    }

    /// The request fields that cap output tokens, in order of precedence.
    fn cap_fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::OpenAiChat => &["max_completion_tokens", "max_tokens"],
            Endpoint::OpenAiResponses => &["max_output_tokens"],
            Endpoint::AnthropicMessages => &["max_tokens"],
        }
    }
}

/// A metered request that cannot be priced (the proxy refuses it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{} request body is not a JSON object: {message}", endpoint.as_str())]
    NotJson { endpoint: Endpoint, message: String },
    #[error("{} request has no \"model\" string", endpoint.as_str())]
    NoModel { endpoint: Endpoint },
    #[error("{} request model {model:?}: {field} must be a non-negative integer (got {value})", endpoint.as_str())]
    BadField {
        endpoint: Endpoint,
        model: String,
        field: &'static str,
        value: String,
    },
}

/// What the estimate and the response parser need from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredRequest {
    pub endpoint: Endpoint,
    pub model: String,
    /// `"stream": true`: the response is server-sent events.
    pub stream: bool,
    /// The output cap the request sets, if any.
    pub max_output_tokens: Option<u64>,
    /// Completions asked for (chat `n`; 1 elsewhere).
    pub choices: u64,
    /// Size of the request body, for the input estimate.
    pub body_bytes: u64,
    /// A Responses request with `"background": true`: its usage comes
    /// later, to a GET that is not metered.
    pub background: bool,
}

impl MeteredRequest {
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<MeteredRequest, RequestError> {
        let object = parse_object(endpoint, body)?;
        let model = match object.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(RequestError::NoModel { endpoint }),
        };
        let uint = |field: &'static str| -> Result<Option<u64>, RequestError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| RequestError::BadField {
                    endpoint,
                    model: model.clone(),
                    field,
                    value: v.to_string(),
                }),
            }
        };
        let mut max_output_tokens = None;
        for field in endpoint.cap_fields() {
            if let Some(cap) = uint(field)? {
                max_output_tokens = Some(cap);
                break;
            }
        }
        let choices = match endpoint {
            Endpoint::OpenAiChat => uint("n")?.unwrap_or(1).max(1),
            _ => 1,
        };
        Ok(MeteredRequest {
            endpoint,
            stream: object.get("stream") == Some(&Value::Bool(true)),
            max_output_tokens,
            choices,
            body_bytes: body.len() as u64,
            background: endpoint == Endpoint::OpenAiResponses
                && object.get("background") == Some(&Value::Bool(true)),
            model,
        })
    }
}

/// The body as a JSON object whose top-level keys are unique: with
/// `{"model":"cheap","model":"dear"}` the proxy and the upstream could
/// disagree on what is asked, so it is refused.
fn parse_object(endpoint: Endpoint, body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    serde_json::from_slice::<UniqueKeys>(body)
        .map(|u| u.0)
        .map_err(|e| RequestError::NotJson {
            endpoint,
            message: e.to_string(),
        })
}

struct UniqueKeys(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key {key:?}"
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// The reservation for `request` at `price`: the output cap (or
/// `default_max_tokens` when the request sets none) × choices × output
/// price, plus ceil(body bytes / 4) × the dearest input price.
pub fn estimate(request: &MeteredRequest, price: &ModelPrice, default_max_tokens: u64) -> PicoUsd {
    let output_tokens = request
        .max_output_tokens
        .unwrap_or(default_max_tokens)
        .saturating_mul(request.choices);
    let input_tokens = request.body_bytes.div_ceil(BYTES_PER_TOKEN_ESTIMATE);
    price
        .output
        .times(output_tokens)
        .saturating_add(price.max_input().times(input_tokens))
}

/// For a streaming chat completion, the body with
/// `"stream_options":{"include_usage":true}` (without it the stream carries
/// no usage); `None` when the body needs no change (not streaming, another
/// endpoint, or already set). The caller must fix `Content-Length`.
///
/// When `stream_options` is absent the member is inserted right after the
/// opening `{`, leaving every other byte as sent; otherwise the object is
/// re-serialised with `include_usage` set (member order may change).
pub fn with_include_usage(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Option<Vec<u8>>, RequestError> {
    if endpoint != Endpoint::OpenAiChat {
        return Ok(None);
    }
    let mut object = parse_object(endpoint, body)?;
    if object.get("stream") != Some(&Value::Bool(true)) {
        return Ok(None);
    }
    match object.get_mut("stream_options") {
        None => {
            let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
            let member: &[u8] = if object.is_empty() {
                br#""stream_options":{"include_usage":true}"#
            } else {
                br#""stream_options":{"include_usage":true},"#
            };
            let mut out = Vec::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member);
            out.extend_from_slice(&body[open + 1..]);
            Ok(Some(out))
        }
        Some(Value::Object(options))
            if options.get("include_usage") == Some(&Value::Bool(true)) =>
        {
            Ok(None)
        }
        Some(options) => {
            match options {
                Value::Object(o) => {
                    o.insert("include_usage".to_string(), Value::Bool(true));
                }
                other => {
                    let mut o = Map::new();
                    o.insert("include_usage".to_string(), Value::Bool(true));
                    *other = Value::Object(o);
                }
            }
            serde_json::to_vec(&Value::Object(object))
                .map(Some)
                .map_err(|e| RequestError::NotJson {
                    endpoint,
                    message: e.to_string(),
                })
        }
    }
}

// ---------------------------------------------------------------------------
// Usage as the APIs report it

/// A JSON integer that may also be `null` or absent (→ 0).
type Count = Option<u64>;

#[derive(Debug, Default, Deserialize)]
pub(super) struct OpenAiChatUsage {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default)]
    prompt_tokens_details: Option<CachedDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct OpenAiResponsesUsage {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    input_tokens_details: Option<CachedDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct CachedDetails {
    #[serde(default)]
    cached_tokens: Count,
}

/// Anthropic's usage; in a stream's `message_delta` every field is the
/// cumulative value so far, and absent fields keep their earlier value.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) struct AnthropicUsage {
    #[serde(default)]
    pub(super) input_tokens: Count,
    #[serde(default)]
    pub(super) output_tokens: Count,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Count,
    #[serde(default)]
    pub(super) cache_read_input_tokens: Count,
}

impl OpenAiChatUsage {
    pub(super) fn normalise(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(prompt);
        Usage {
            input: prompt - cached,
            cached_input: cached,
            cache_write: 0,
            output: self.completion_tokens.unwrap_or(0),
        }
    }
}

impl OpenAiResponsesUsage {
    pub(super) fn normalise(&self) -> Usage {
        let total_in = self.input_tokens.unwrap_or(0);
        let cached = self
            .input_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(total_in);
        Usage {
            input: total_in - cached,
            cached_input: cached,
            cache_write: 0,
            output: self.output_tokens.unwrap_or(0),
        }
    }
}

impl AnthropicUsage {
    /// `self` updated with the fields `later` reports.
    pub(super) fn merged(self, later: &AnthropicUsage) -> AnthropicUsage {
        AnthropicUsage {
            input_tokens: later.input_tokens.or(self.input_tokens),
            output_tokens: later.output_tokens.or(self.output_tokens),
            cache_creation_input_tokens: later
                .cache_creation_input_tokens
                .or(self.cache_creation_input_tokens),
            cache_read_input_tokens: later
                .cache_read_input_tokens
                .or(self.cache_read_input_tokens),
        }
    }

    pub(super) fn normalise(&self) -> Usage {
        Usage {
            input: self.input_tokens.unwrap_or(0),
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            cache_write: self.cache_creation_input_tokens.unwrap_or(0),
            output: self.output_tokens.unwrap_or(0),
        }
    }
}

/// A plain response (chat completion, Responses object, Anthropic message).
#[derive(Debug, Deserialize)]
struct PlainResponse<U> {
    // Absent `Option` fields are `None` without `#[serde(default)]`.
    model: Option<String>,
    usage: Option<U>,
}

/// Why a plain response body has no usable usage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} response body is not a JSON object with a valid usage: {message}", endpoint.as_str())]
pub struct ResponseError {
    pub endpoint: Endpoint,
    pub message: String,
}

/// The usage of a complete, non-streaming response body. `Ok(None)`: valid
/// JSON without usage (an error body, for instance).
pub fn plain_usage(endpoint: Endpoint, body: &[u8]) -> Result<Option<Metered>, ResponseError> {
    fn parse<U: for<'de> Deserialize<'de>>(
        endpoint: Endpoint,
        body: &[u8],
        normalise: impl Fn(&U) -> Usage,
    ) -> Result<Option<Metered>, ResponseError> {
        let r: PlainResponse<U> = serde_json::from_slice(body).map_err(|e| ResponseError {
            endpoint,
            message: e.to_string(),
        })?;
        Ok(r.usage.map(|u| Metered {
            usage: normalise(&u),
            model: r.model,
        }))
    }
    match endpoint {
        Endpoint::OpenAiChat => parse(endpoint, body, OpenAiChatUsage::normalise),
        Endpoint::OpenAiResponses => parse(endpoint, body, OpenAiResponsesUsage::normalise),
        Endpoint::AnthropicMessages => parse(endpoint, body, AnthropicUsage::normalise),
    }
}

#[cfg(test)]
mod tests;
