//! Spend metering (`--max-spend-usd`) between the proxy and the pure core in
//! [`crate::net::spend`]: admit a metered request against the budget, read
//! its response's usage as the body goes by, settle when the body ends.
//!
//! Invariants:
//! - A metered request reaches the upstream only with a reservation held
//!   ([`Spend::admit`]); a request refused before it was sent releases its
//!   reservation at zero ([`Meter::unsent`]).
//! - A response that ends normally is settled with its usage; one with no
//!   usage, or one that broke, is charged its full reservation; an upstream
//!   error status without usage is not billed (settled at zero).

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};

use crate::net::decide::Reason;
use crate::net::spend::{
    self, Endpoint, Ledger, ModelPrice, PicoUsd, PriceTable, Reservation, ResponseMeter,
    Settlement, SpendError,
};

/// The largest metered request body read (prompts with images are large).
pub const MAX_METERED_BODY: usize = 32 << 20;

/// A run's budget and prices.
#[derive(Debug)]
pub struct Spend {
    pub ledger: Ledger,
    pub prices: PriceTable,
    /// The output cap assumed for a request that sets none.
    pub default_max_tokens: u64,
}

/// A metered request that holds a reservation.
pub(super) struct Admitted {
    /// The body to send instead of the original (`include_usage` added).
    pub body: Option<Vec<u8>>,
    pub meter: Meter,
}

/// One metered exchange, from admission to settlement.
pub(super) struct Meter {
    endpoint: Endpoint,
    price: ModelPrice,
    /// The model the request asked for (what it was priced as).
    pub model: String,
    reservation: Option<Reservation>,
    ledger: Ledger,
    response: Option<ResponseMeter>,
}

impl Spend {
    pub fn new(budget: PicoUsd, prices: PriceTable) -> Spend {
        Spend {
            ledger: Ledger::new(budget),
            prices,
            default_max_tokens: spend::DEFAULT_MAX_TOKENS,
        }
    }

    /// Price `body`, reserve its estimate, or say why not (with, for the
    /// budget, what admitting it would have committed).
    pub(super) fn admit(
        &self,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<Admitted, (Reason, Option<PicoUsd>)> {
        let plan = spend::plan(&self.prices, self.default_max_tokens, endpoint, body).map_err(
            |e| match e {
                SpendError::UnknownModel(_) => (Reason::UnknownModel, None),
                SpendError::Request(_) => (Reason::UnpricedRequest, None),
            },
        )?;
        if plan.request.background {
            return Err((Reason::UnmeteredEndpoint, None));
        }
        let reservation = self.ledger.reserve(plan.estimate).map_err(|e| {
            let needed = e
                .spent
                .saturating_add(e.reserved)
                .saturating_add(e.estimate);
            (Reason::BudgetExceeded, Some(needed))
        })?;
        Ok(Admitted {
            body: plan.body,
            meter: Meter {
                endpoint,
                price: plan.price.price,
                model: plan.request.model,
                reservation: Some(reservation),
                ledger: self.ledger.clone(),
                response: None,
            },
        })
    }

    /// Spent so far (settled requests only).
    pub fn spent(&self) -> PicoUsd {
        self.ledger.balance().spent
    }
}

impl Meter {
    /// The response head arrived; `event_stream`: `text/event-stream`.
    pub fn start(&mut self, event_stream: bool) {
        self.response = Some(ResponseMeter::new(self.endpoint, event_stream));
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(r) = &mut self.response {
            r.feed(chunk);
        }
    }

    /// The request never reached the upstream: nothing was billed.
    pub fn unsent(mut self) -> Option<Settlement> {
        let reservation = self.reservation.take()?;
        Some(self.ledger.settle(reservation, PicoUsd(0)))
    }

    /// The response is over: `complete` when its body ended normally.
    pub fn settle(mut self, status: Option<u16>, complete: bool) -> Option<Settlement> {
        let reservation = self.reservation.take()?;
        let usage = match (complete, self.response.take()) {
            (true, Some(r)) => r.finish(),
            _ => None,
        };
        Some(match usage {
            Some(m) => self.ledger.settle(reservation, self.price.cost(&m.usage)),
            None if complete && status.is_some_and(|s| s >= 400) => {
                self.ledger.settle(reservation, PicoUsd(0))
            }
            None => self.ledger.charge_reservation(reservation),
        })
    }
}

/// How a request counts against a spend budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Priced by its usage.
    Metered(Endpoint),
    /// Billable, but not priceable here: refused under a budget.
    Unmetered,
    /// Not an LLM API call.
    Free,
}

/// Path endings of billable APIs the proxy cannot price (OpenAI and
/// Anthropic shapes, on any host and under any prefix).
const UNMETERED_SUFFIXES: &[&str] = &[
    "/completions",
    "/embeddings",
    "/batches",
    "/images/generations",
    "/images/edits",
    "/images/variations",
    "/audio/speech",
    "/audio/transcriptions",
    "/audio/translations",
    "/runs",
    "/realtime",
    "/realtime/sessions",
    "/fine_tuning/jobs",
];

/// Classify a request under a budget. The metered endpoints are matched by
/// their ending, case-insensitively, under any prefix (`/api/v1/...`,
/// `/openai/deployments/x/...`), because OpenAI-compatible servers mount
/// them anywhere; a path with encodings or dot segments that a server
/// might read differently is refused rather than guessed.
pub(super) fn classify(method: &hyper::Method, path: &str, websocket: bool) -> Class {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let lower = path.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('/').unwrap_or(&lower);
    if websocket {
        return if trimmed.contains("/realtime") {
            Class::Unmetered
        } else {
            Class::Free
        };
    }
    if method != hyper::Method::POST {
        return Class::Free;
    }
    let ambiguous = trimmed.contains("//")
        || trimmed.contains(['%', ';', '\\'])
        || trimmed.split('/').any(|s| s == "." || s == "..");
    if ambiguous && trimmed.contains("/v1") {
        return Class::Unmetered;
    }
    if trimmed.ends_with("/chat/completions") {
        Class::Metered(Endpoint::OpenAiChat)
    } else if trimmed.ends_with("/responses") {
        Class::Metered(Endpoint::OpenAiResponses)
    } else if trimmed.ends_with("/messages") && !trimmed.contains("/threads/") {
        Class::Metered(Endpoint::AnthropicMessages)
    } else if UNMETERED_SUFFIXES.iter().any(|s| trimmed.ends_with(s)) {
        Class::Unmetered
    } else {
        Class::Free
    }
}

/// A request body read whole, up to [`MAX_METERED_BODY`] bytes.
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, Reason> {
    let limited = http_body_util::Limited::new(body, MAX_METERED_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reason::UnpricedRequest),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn spend(budget_usd: &str) -> Spend {
        Spend::new(
            PicoUsd::parse_usd(budget_usd).unwrap(),
            PriceTable::shipped().unwrap(),
        )
    }

    const CHAT: &[u8] =
        br#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn admitted_requests_hold_a_reservation_until_settled() {
        let s = spend("1");
        let a = s.admit(Endpoint::OpenAiChat, CHAT).unwrap();
        assert!(s.ledger.balance().reserved > PicoUsd(0));
        assert_eq!(a.meter.model, "gpt-4o-mini");
        let settled = a.meter.unsent().unwrap();
        assert_eq!(settled.cost, PicoUsd(0));
        assert_eq!(s.ledger.balance().reserved, PicoUsd(0));
    }

    #[test]
    fn a_response_without_usage_is_charged_its_reservation() {
        let s = spend("1");
        let mut m = s.admit(Endpoint::OpenAiChat, CHAT).unwrap().meter;
        m.start(false);
        m.feed(br#"{"id":"x","choices":[]}"#);
        let settled = m.settle(Some(200), true).unwrap();
        assert_eq!(settled.cost, settled.reserved);
        assert!(settled.cost > PicoUsd(0));
    }

    #[test]
    fn a_broken_response_is_charged_its_reservation_and_an_error_is_free() {
        let s = spend("1");
        let mut m = s.admit(Endpoint::OpenAiChat, CHAT).unwrap().meter;
        m.start(false);
        let settled = m.settle(Some(200), false).unwrap();
        assert_eq!(settled.cost, settled.reserved);

        let mut m = s.admit(Endpoint::OpenAiChat, CHAT).unwrap().meter;
        m.start(false);
        m.feed(br#"{"error":{"message":"overloaded"}}"#);
        assert_eq!(m.settle(Some(500), true).unwrap().cost, PicoUsd(0));
    }

    #[test]
    fn usage_settles_the_real_cost() {
        let s = spend("1");
        let mut m = s.admit(Endpoint::OpenAiChat, CHAT).unwrap().meter;
        m.start(false);
        m.feed(br#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#);
        let settled = m.settle(Some(200), true).unwrap();
        let price = s
            .prices
            .lookup(spend::Provider::OpenAi, "gpt-4o-mini")
            .unwrap()
            .price;
        assert_eq!(
            settled.cost,
            price
                .input
                .times(1000)
                .saturating_add(price.output.times(500))
        );
        assert_eq!(s.spent(), settled.cost);
    }

    #[test]
    fn requests_are_classified_by_their_path_ending() {
        use hyper::Method;
        let c = |m: &Method, p: &str| classify(m, p, false);
        let post = Method::POST;
        assert_eq!(
            c(&post, "/v1/chat/completions"),
            Class::Metered(Endpoint::OpenAiChat)
        );
        assert_eq!(
            c(
                &post,
                "/openai/deployments/x/chat/completions?api-version=1"
            ),
            Class::Metered(Endpoint::OpenAiChat)
        );
        assert_eq!(
            c(&post, "/api/V1/Responses/"),
            Class::Metered(Endpoint::OpenAiResponses)
        );
        assert_eq!(
            c(&post, "/v1/messages"),
            Class::Metered(Endpoint::AnthropicMessages)
        );
        for unmetered in [
            "/v1/completions",
            "/v1/embeddings",
            "/v1/messages/batches",
            "/v1/batches",
            "/v1/images/generations",
            "/v1/audio/speech",
            "/v1/threads/t1/runs",
            "/v1/chat/%63ompletions",
            "//v1/chat/completions",
            "/v1/chat/completions;x",
            "/v1/x/../chat/completions",
        ] {
            assert_eq!(c(&post, unmetered), Class::Unmetered, "{unmetered}");
        }
        for free in [
            "/v1/messages/count_tokens",
            "/v1/threads/t1/messages",
            "/v1/files",
            "/health",
        ] {
            assert_eq!(c(&post, free), Class::Free, "{free}");
        }
        assert_eq!(c(&Method::GET, "/v1/chat/completions"), Class::Free);
        assert_eq!(
            classify(&Method::GET, "/v1/realtime?model=x", true),
            Class::Unmetered
        );
        assert_eq!(classify(&Method::GET, "/ws", true), Class::Free);
    }

    #[test]
    fn background_responses_are_refused() {
        let s = spend("1");
        let body = br#"{"model":"gpt-4o-mini","input":"hi","background":true}"#;
        assert_eq!(
            s.admit(Endpoint::OpenAiResponses, body).err().map(|e| e.0),
            Some(Reason::UnmeteredEndpoint)
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let s = spend("0.000001");
        let needed = match s.admit(Endpoint::OpenAiChat, CHAT) {
            Err((Reason::BudgetExceeded, Some(needed))) => needed,
            _ => panic!("expected budget_exceeded"),
        };
        assert!(needed > PicoUsd::parse_usd("0.000001").unwrap());
        let s = spend("1");
        assert_eq!(
            s.admit(
                Endpoint::OpenAiChat,
                br#"{"model":"no-such-model-xyz","messages":[]}"#
            )
            .err()
            .map(|e| e.0),
            Some(Reason::UnknownModel)
        );
        assert_eq!(
            s.admit(Endpoint::OpenAiChat, b"not json")
                .err()
                .map(|e| e.0),
            Some(Reason::UnpricedRequest)
        );
    }
}
