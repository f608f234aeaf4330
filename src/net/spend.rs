//! LLM spend accounting (`--max-spend-usd`, policy `max_spend_usd`): the
//! pure core that the intercepting proxy calls for every metered request.
//! No I/O here except reading a user price file ([`PriceTable::load`]).
//!
//! - [`money`]: [`PicoUsd`], exact decimal parsing, the units.
//! - [`prices`]: the price table (shipped `prices/default.yaml` + user file),
//!   longest-match model lookup.
//! - [`usage`]: metered endpoints, request parsing, the estimate, the
//!   `stream_options.include_usage` rewrite, plain-response usage.
//! - [`sse`]: the incremental SSE parser and streaming usage.
//! - [`ledger`]: budget, reservations, settlement.
//!
//! Units: money is an integer count of pico-dollars (10⁻¹² USD, `u64`); a
//! price is pico-dollars per token, which is exactly micro-dollars per
//! million tokens, so a table's "USD per million tokens" with up to 6
//! decimals is exact and `tokens × price` needs no rounding. No floats are
//! used in any computation.
//!
//! How the proxy uses it, per request:
//! 1. [`Endpoint::from_path`]; not metered → forward as usual.
//! 2. [`plan`] (model, price, estimate, rewritten body); an error → refuse
//!    the request (unknown model, body that cannot be priced).
//! 3. [`Ledger::reserve`] the estimate; refused → 402.
//! 4. Forward `plan.body` if set (fix `Content-Length`), else the original.
//!    Ask for `Accept-Encoding: identity`: usage is read from the raw body.
//! 5. Feed the response body to a [`ResponseMeter`] as it is forwarded.
//! 6. [`ResponseMeter::finish`]: usage → [`Ledger::settle`] with
//!    `plan.price.price.cost(&usage)`; no usage on a successful or broken
//!    response → [`Ledger::charge_reservation`]. (An upstream error status
//!    whose body has no usage may be settled at zero: it is not billed.)
//!
//! Invariants:
//! - A metered request is forwarded only with a reservation held, and every
//!   reservation is released exactly once (see [`ledger`]).
//! - A request is priced with the price of the model it asked for (what was
//!   reserved and admitted); the model the response names is only reported.
//! - Unknown model: refused unless the table (or the policy, through
//!   [`PriceTable::set_default`]) has a default price for the provider.

pub mod ledger;
pub mod money;
pub mod prices;
pub mod sse;
pub mod usage;

pub use ledger::{Balance, BudgetExceeded, Ledger, Reservation, Settlement};
pub use money::{DecimalError, PicoUsd};
pub use prices::{ModelPrice, PriceFileError, PriceMatch, PriceTable, Provider, UnknownModel};
pub use sse::{SseParser, StreamUsage};
pub use usage::{
    estimate, plain_usage, with_include_usage, Endpoint, Metered, MeteredRequest, RequestError,
    Usage,
};

/// The output cap assumed for a request that sets none, unless the policy
/// gives another.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;
/// The largest plain (non-streaming) response body read for usage.
pub const MAX_PLAIN_BODY_BYTES: usize = sse::MAX_EVENT_BYTES;

/// Why a metered request cannot be admitted (before any budget check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
}

/// What the proxy needs before forwarding a metered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub request: MeteredRequest,
    pub price: PriceMatch<'a>,
    /// What to reserve.
    pub estimate: PicoUsd,
    /// The body to forward instead of the original (`include_usage` added).
    pub body: Option<Vec<u8>>,
}

/// Parse, price and estimate a metered request.
pub fn plan<'a>(
    prices: &'a PriceTable,
    default_max_tokens: u64,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Plan<'a>, SpendError> {
    let request = MeteredRequest::parse(endpoint, body)?;
    let price = prices.lookup(endpoint.provider(), &request.model)?;
    let estimate = usage::estimate(&request, &price.price, default_max_tokens);
    let with_usage = if request.stream {
        with_include_usage(endpoint, body)?
    } else {
        None
    };
    // A request without an output cap gets the one it was reserved for, so
    // that its reservation bounds what it can cost even if it never reports
    // usage (a stream the client leaves early).
    let body = match (request.max_output_tokens, cap_field(endpoint)) {
        (None, Some(field)) => Some(insert_member(
            with_usage.as_deref().unwrap_or(body),
            field,
            default_max_tokens,
        )),
        _ => with_usage,
    };
    Ok(Plan {
        request,
        price,
        estimate,
        body,
    })
}

/// The member that caps output tokens, for the APIs where it is optional
/// (Anthropic requires `max_tokens`).
fn cap_field(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::OpenAiChat => Some("max_completion_tokens"),
        Endpoint::OpenAiResponses => Some("max_output_tokens"),
        Endpoint::AnthropicMessages => None,
    }
}

/// `body` (a JSON object with members, as parsed already) with
/// `"name":value,` inserted right after its opening brace; every other
/// byte stays as sent.
fn insert_member(body: &[u8], name: &str, value: u64) -> Vec<u8> {
    let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
    let member = format!("\"{name}\":{value},");
    let mut out = Vec::with_capacity(body.len() + member.len());
    out.extend_from_slice(body.get(..=open).unwrap_or_default());
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(body.get(open + 1..).unwrap_or_default());
    out
}

/// Reads a response's usage as its body goes by, in bounded memory.
#[derive(Debug)]
pub enum ResponseMeter {
    Plain {
        endpoint: Endpoint,
        body: Vec<u8>,
        overflow: bool,
    },
    Stream(StreamUsage),
}

impl ResponseMeter {
    /// `event_stream`: the response is `text/event-stream`.
    pub fn new(endpoint: Endpoint, event_stream: bool) -> ResponseMeter {
        if event_stream {
            ResponseMeter::Stream(StreamUsage::new(endpoint))
        } else {
            ResponseMeter::Plain {
                endpoint,
                body: Vec::new(),
                overflow: false,
            }
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            ResponseMeter::Stream(s) => s.feed(chunk),
            ResponseMeter::Plain { body, overflow, .. } => {
                if *overflow || body.len() + chunk.len() > MAX_PLAIN_BODY_BYTES {
                    *overflow = true;
                    *body = Vec::new();
                } else {
                    body.extend_from_slice(chunk);
                }
            }
        }
    }

    /// The usage, when the response reported it completely; `None` means
    /// "charge the reservation" (or zero for an unbilled error status).
    pub fn finish(self) -> Option<Metered> {
        match self {
            ResponseMeter::Stream(s) => s.finish(),
            ResponseMeter::Plain {
                endpoint,
                body,
                overflow: false,
            } => plain_usage(endpoint, &body).ok().flatten(),
            ResponseMeter::Plain { overflow: true, .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
