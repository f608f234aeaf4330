//! The LLM price table: USD per million tokens, per provider and model.
//!
//! A table is the shipped default (`prices/default.yaml`, embedded in the
//! binary, see [`PriceTable::shipped`]) with an optional user file laid over
//! it ([`PriceTable::overlay`]): an entry in the user file replaces the entry
//! with the same pattern, whole, and a user `default` replaces the shipped
//! one. The policy may also set a default price ([`PriceTable::set_default`]).
//!
//! Invariants:
//! - A [`PriceTable`] is always valid: every price parsed exactly (see
//!   [`super::money`]), every pattern is an exact model name or a prefix
//!   ending in a single trailing `*`.
//! - Lookup ([`PriceTable::lookup`]) is deterministic: an exact name beats
//!   any prefix; among matching prefixes the longest wins; then the
//!   provider's default; otherwise [`UnknownModel`] (the request is refused).
//!   Model names compare case-sensitively, as the APIs send them.
//! - Every error about a file's content names the file, the line and the
//!   model pattern or key at fault.
//! - Parsing is pure; only [`PriceTable::load`] reads a file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::money::{parse_price_per_mtok, PicoUsd};
use super::usage::Usage;

/// The shipped table's text.
pub const SHIPPED_YAML: &str = include_str!("../../../prices/default.yaml");
/// How the shipped table is named in messages.
pub const SHIPPED_NAME: &str = "<built-in prices/default.yaml>";
/// A price table is a few kilobytes; anything past this is a mistake.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The longest model pattern accepted.
pub const MAX_PATTERN_LEN: usize = 200;

/// Whose price list applies. The API shape decides it (see
/// [`super::usage::Endpoint::provider`]), not the host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::OpenAi, Provider::Anthropic];

    /// The key in a price file.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prices of one model, each in pico-dollars per token (= micro-dollars per
/// million tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    /// Uncached input tokens.
    pub input: PicoUsd,
    /// Input tokens read from the prompt cache.
    pub cached_input: PicoUsd,
    /// Input tokens written to the prompt cache (Anthropic).
    pub cache_write: PicoUsd,
    /// Output tokens (reasoning/thinking included).
    pub output: PicoUsd,
}

impl ModelPrice {
    /// What `usage` costs at these prices (saturating, never wraps).
    pub fn cost(&self, usage: &Usage) -> PicoUsd {
        self.input
            .times(usage.input)
            .saturating_add(self.cached_input.times(usage.cached_input))
            .saturating_add(self.cache_write.times(usage.cache_write))
            .saturating_add(self.output.times(usage.output))
    }

    /// The dearest of the input prices: what an input token is assumed to
    /// cost before the response says how it was billed.
    pub fn max_input(&self) -> PicoUsd {
        self.input.max(self.cached_input).max(self.cache_write)
    }
}

/// Where an entry came from (for messages and events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, line {}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    price: ModelPrice,
    origin: Origin,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ProviderPrices {
    /// Pattern text (`gpt-4o`, `gpt-4o-20*`) → entry.
    entries: BTreeMap<String, Entry>,
    default: Option<Entry>,
}

/// What priced a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule<'a> {
    /// An exact name or a `prefix*` pattern, as written in the file.
    Pattern(&'a str),
    /// The provider's default price.
    Default,
}

impl fmt::Display for Rule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Pattern(p) => f.write_str(p),
            Rule::Default => f.write_str("default"),
        }
    }
}

/// The result of a successful lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceMatch<'a> {
    pub price: ModelPrice,
    pub rule: Rule<'a>,
    pub origin: &'a Origin,
}

/// No pattern matches the model and the provider has no default price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no price for {provider} model {model:?} (add it to the price table, or set a default price)"
)]
pub struct UnknownModel {
    pub provider: Provider,
    pub model: String,
}

/// A price file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    #[error("cannot read price file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("price file {} is larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    /// Not YAML, an unknown key, or the wrong shape (a list where a mapping
    /// belongs, a duplicate model, ...).
    #[error("price file {}, line {line}, column {column}: {key}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
    #[error("price file {}, line {line}: {provider} model pattern {pattern:?}: {message}", path.display())]
    Pattern {
        path: PathBuf,
        line: u64,
        provider: Provider,
        pattern: String,
        message: String,
    },
    /// `model` is the pattern, or `default`.
    #[error("price file {}, line {line}: {provider} model {model:?}: {field}: {message}", path.display())]
    Price {
        path: PathBuf,
        line: u64,
        provider: Provider,
        model: String,
        field: &'static str,
        message: String,
    },
}

impl PriceFileError {
    /// The 1-based line at fault, when the error is about the content.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Syntax { line, .. } | Self::Pattern { line, .. } | Self::Price { line, .. } => {
                Some(*line)
            }
            Self::Read { .. } | Self::TooLarge { .. } => None,
        }
    }
}

/// Prices for every provider. Always valid (see the module invariants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    providers: BTreeMap<Provider, ProviderPrices>,
}

impl PriceTable {
    /// The embedded default table.
    pub fn shipped() -> Result<PriceTable, PriceFileError> {
        Self::parse(SHIPPED_YAML, Path::new(SHIPPED_NAME))
    }

    /// The shipped table with `user` (if any) laid over it.
    pub fn shipped_with(user: Option<&Path>) -> Result<PriceTable, PriceFileError> {
        let mut table = Self::shipped()?;
        if let Some(path) = user {
            table.overlay(Self::load(path)?);
        }
        Ok(table)
    }

    /// Read and validate a price file.
    pub fn load(path: &Path) -> Result<PriceTable, PriceFileError> {
        let text = crate::textfile::read_limited(path, MAX_FILE_BYTES).map_err(|e| match e {
            crate::textfile::ReadError::Io(source) => PriceFileError::Read {
                path: path.to_path_buf(),
                source,
            },
            crate::textfile::ReadError::TooLarge => PriceFileError::TooLarge {
                path: path.to_path_buf(),
            },
        })?;
        Self::parse(&text, path)
    }

    /// Validate price-file text; `source` names it in messages and origins.
    pub fn parse(text: &str, source: &Path) -> Result<PriceTable, PriceFileError> {
        let raw = parse_raw(text, source)?;
        let mut table = PriceTable::default();
        for (provider, raw_provider) in [
            (Provider::OpenAi, raw.openai),
            (Provider::Anthropic, raw.anthropic),
        ] {
            if let Some(p) = raw_provider {
                let prices = validate_provider(provider, p, source)?;
                table.providers.insert(provider, prices);
            }
        }
        Ok(table)
    }

    /// Lay `over` on this table: its entries replace entries with the same
    /// pattern, its defaults replace defaults.
    pub fn overlay(&mut self, over: PriceTable) {
        for (provider, prices) in over.providers {
            let mine = self.providers.entry(provider).or_default();
            mine.entries.extend(prices.entries);
            if prices.default.is_some() {
                mine.default = prices.default;
            }
        }
    }

    /// Set the price of models no pattern matches (the policy's default
    /// price); `origin` says where it was configured.
    pub fn set_default(&mut self, provider: Provider, price: ModelPrice, origin: Origin) {
        self.providers.entry(provider).or_default().default = Some(Entry { price, origin });
    }

    /// The price of `model`: exact name, else longest matching prefix, else
    /// the provider's default.
    pub fn lookup<'a>(
        &'a self,
        provider: Provider,
        model: &str,
    ) -> Result<PriceMatch<'a>, UnknownModel> {
        let unknown = || UnknownModel {
            provider,
            model: model.to_string(),
        };
        let prices = self.providers.get(&provider).ok_or_else(unknown)?;
        let found = prices
            .entries
            .get_key_value(model)
            .filter(|(pattern, _)| !pattern.ends_with('*'))
            .or_else(|| {
                prices
                    .entries
                    .iter()
                    .filter(|(pattern, _)| {
                        pattern
                            .strip_suffix('*')
                            .is_some_and(|prefix| model.starts_with(prefix))
                    })
                    .max_by_key(|(pattern, _)| pattern.len())
            });
        match (found, &prices.default) {
            (Some((pattern, entry)), _) => Ok(PriceMatch {
                price: entry.price,
                rule: Rule::Pattern(pattern),
                origin: &entry.origin,
            }),
            (None, Some(entry)) => Ok(PriceMatch {
                price: entry.price,
                rule: Rule::Default,
                origin: &entry.origin,
            }),
            (None, None) => Err(unknown()),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw serde shape

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default)]
    openai: Option<RawProvider>,
    #[serde(default)]
    anthropic: Option<RawProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[serde(default)]
    models: Option<HashMap<Spanned<String>, Spanned<RawPrice>>>,
    #[serde(default)]
    default: Option<Spanned<RawPrice>>,
}

/// Every price is read as the scalar's text, so `2.50` stays `"2.50"` and is
/// parsed exactly (never through a float).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(default)]
    input: Option<Spanned<String>>,
    #[serde(default)]
    cached_input: Option<Spanned<String>>,
    #[serde(default)]
    cache_write: Option<Spanned<String>>,
    #[serde(default)]
    output: Option<Spanned<String>>,
}

fn parse_raw(text: &str, source: &Path) -> Result<RawTable, PriceFileError> {
    let blank = text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    });
    if blank {
        return Ok(RawTable::default());
    }
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        RawTable::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((0, 0), |loc| (loc.line(), loc.column()));
        let path = track.path().to_string();
        let key = match path.trim_end_matches(".value").trim_end_matches(".?") {
            "" | "." => "(top level)".to_string(),
            k => k.to_string(),
        };
        let message = e.without_snippet().to_string();
        let message = match message.rsplit_once(" at line ") {
            Some((head, tail)) if tail.contains("column") => head.to_string(),
            _ => message,
        };
        PriceFileError::Syntax {
            path: source.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    })
}

fn validate_provider(
    provider: Provider,
    raw: RawProvider,
    source: &Path,
) -> Result<ProviderPrices, PriceFileError> {
    let mut models: Vec<_> = raw.models.unwrap_or_default().into_iter().collect();
    // File order, so that the first bad entry is the one reported.
    models.sort_by_key(|(k, _)| (k.referenced.line(), k.referenced.column()));
    let mut out = ProviderPrices::default();
    for (pattern, price) in models {
        let line = pattern.referenced.line();
        check_pattern(&pattern.value).map_err(|message| PriceFileError::Pattern {
            path: source.to_path_buf(),
            line,
            provider,
            pattern: pattern.value.clone(),
            message: message.to_string(),
        })?;
        let price = validate_price(provider, &pattern.value, price, source)?;
        out.entries.insert(pattern.value, price);
    }
    if let Some(price) = raw.default {
        out.default = Some(validate_price(provider, "default", price, source)?);
    }
    Ok(out)
}

/// An exact model name, or a non-empty prefix followed by one `*`.
fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.is_empty() {
        return Err(
            "needs a model name or a prefix before '*' (use `default` for a catch-all price)",
        );
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err("is too long");
    }
    if name.contains('*') {
        return Err("'*' is allowed only once, at the end");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

fn validate_price(
    provider: Provider,
    model: &str,
    raw: Spanned<RawPrice>,
    source: &Path,
) -> Result<Entry, PriceFileError> {
    let entry_line = raw.referenced.line();
    let err = |line: u64, field: &'static str, message: String| PriceFileError::Price {
        path: source.to_path_buf(),
        line,
        provider,
        model: model.to_string(),
        field,
        message,
    };
    let field = |value: &Option<Spanned<String>>, name: &'static str| {
        value
            .as_ref()
            .map(|v| {
                parse_price_per_mtok(v.value.trim())
                    .map_err(|e| err(v.referenced.line(), name, e.to_string()))
            })
            .transpose()
    };
    let raw = raw.value;
    let input = field(&raw.input, "input")?
        .ok_or_else(|| err(entry_line, "input", "is required".to_string()))?;
    let output = field(&raw.output, "output")?
        .ok_or_else(|| err(entry_line, "output", "is required".to_string()))?;
    Ok(Entry {
        price: ModelPrice {
            input,
            cached_input: field(&raw.cached_input, "cached_input")?.unwrap_or(input),
            cache_write: field(&raw.cache_write, "cache_write")?.unwrap_or(input),
            output,
        },
        origin: Origin {
            file: source.to_path_buf(),
            line: entry_line,
        },
    })
}

#[cfg(test)]
mod tests;
