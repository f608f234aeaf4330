//! Exact money: integer pico-dollars and exact decimal parsing.
//!
//! Units (the only two in the spend module):
//! - An amount of money is a [`PicoUsd`]: an integer count of 10⁻¹² US
//!   dollars. `u64` holds up to about 18.4 million dollars.
//! - A price is a [`PicoUsd`] *per token*. A price table says "USD per
//!   million tokens"; one pico-dollar per token is exactly one micro-dollar
//!   per million tokens, so a table price is parsed with 6 decimal places
//!   ([`parse_price_per_mtok`]) and `tokens × price` is the cost in
//!   pico-dollars with no division and no rounding.
//!
//! Invariants:
//! - No floating point in any computation. Decimal text (`"2.50"`) is parsed
//!   digit by digit; [`PicoUsd::to_usd_f64`] exists only for reports.
//! - Arithmetic saturates instead of wrapping: an overflowing cost becomes
//!   `u64::MAX` pico-dollars, which no budget admits (errs toward spending
//!   more, never less).

use std::fmt;

/// Decimal places of a price in "USD per million tokens" that are exact.
pub const PRICE_DECIMALS: u32 = 6;
/// Decimal places of an amount in USD that are exact.
pub const USD_DECIMALS: u32 = 12;

/// An amount of money in pico-dollars (10⁻¹² USD); also a price per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PicoUsd(pub u64);

impl PicoUsd {
    pub const ZERO: PicoUsd = PicoUsd(0);
    /// The saturated value: an amount too large to represent.
    pub const MAX: PicoUsd = PicoUsd(u64::MAX);

    /// Parse a dollar amount like `"5"`, `"0.25"` or `"12.000000000001"`.
    pub fn parse_usd(text: &str) -> Result<PicoUsd, DecimalError> {
        parse_decimal(text, USD_DECIMALS).map(PicoUsd)
    }

    /// A dollar amount given as a float (the policy file's `max_spend_usd`),
    /// through its shortest decimal form; digits past the 12th decimal place
    /// are dropped (rounds down: a budget never grows in conversion).
    pub fn from_usd_f64(usd: f64) -> Result<PicoUsd, DecimalError> {
        if !usd.is_finite() {
            return Err(DecimalError::Syntax {
                text: usd.to_string(),
            });
        }
        let text = format!("{usd}");
        let truncated = match text.split_once('.') {
            Some((int, frac)) if frac.len() > USD_DECIMALS as usize => {
                format!("{int}.{}", &frac[..USD_DECIMALS as usize])
            }
            _ => text,
        };
        Self::parse_usd(&truncated)
    }

    pub fn saturating_add(self, other: PicoUsd) -> PicoUsd {
        PicoUsd(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: PicoUsd) -> PicoUsd {
        PicoUsd(self.0.saturating_sub(other.0))
    }

    /// `tokens` at this price per token.
    pub fn times(self, tokens: u64) -> PicoUsd {
        PicoUsd(self.0.saturating_mul(tokens))
    }

    /// For reports (event fields, `session.json`) only: never compute with it.
    pub fn to_usd_f64(self) -> f64 {
        // Split so that both halves convert exactly (< 2^53).
        let whole = self.0 / 1_000_000_000_000;
        let frac = self.0 % 1_000_000_000_000;
        whole as f64 + frac as f64 / 1e12
    }

    /// The price per million tokens as decimal text (`"2.5"`).
    pub fn per_mtok_string(self) -> String {
        format_decimal(self.0, PRICE_DECIMALS, 0)
    }
}

/// Dollars with at least two decimals and no trailing zeros past them:
/// `1.50`, `0.000002`, `18446744.073709551615`.
impl fmt::Display for PicoUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_decimal(self.0, USD_DECIMALS, 2))
    }
}

/// Why decimal text is not an exact non-negative amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error(
        "{text:?} is not a decimal number like 2.50 (digits, an optional '.' and more digits)"
    )]
    Syntax { text: String },
    #[error("{text:?} has more than {max} decimal places")]
    TooPrecise { text: String, max: u32 },
    #[error("{text:?} is too large")]
    TooLarge { text: String },
}

/// Parse `digits[.digits]` into an integer scaled by 10^`decimals`, exactly.
/// Extra decimal places are accepted only when they are zeros.
pub fn parse_decimal(text: &str, decimals: u32) -> Result<u64, DecimalError> {
    let syntax = || DecimalError::Syntax {
        text: text.to_string(),
    };
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || text.ends_with('.') {
        return Err(syntax());
    }
    let (kept, extra) = frac.split_at(frac.len().min(decimals as usize));
    if extra.bytes().any(|b| b != b'0') {
        return Err(DecimalError::TooPrecise {
            text: text.to_string(),
            max: decimals,
        });
    }
    let too_large = || DecimalError::TooLarge {
        text: text.to_string(),
    };
    let mut value: u64 = 0;
    for b in int.bytes().chain(kept.bytes()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    let missing = decimals - kept.len() as u32;
    value.checked_mul(10u64.pow(missing)).ok_or_else(too_large)
}

/// A price in "USD per million tokens" (`"2.50"`) as pico-dollars per token.
pub fn parse_price_per_mtok(text: &str) -> Result<PicoUsd, DecimalError> {
    parse_decimal(text, PRICE_DECIMALS).map(PicoUsd)
}

/// `value / 10^decimals` as text, keeping at least `min_decimals` places.
fn format_decimal(value: u64, decimals: u32, min_decimals: usize) -> String {
    let scale = 10u64.pow(decimals);
    let whole = value / scale;
    let frac = format!("{:0width$}", value % scale, width = decimals as usize);
    let trimmed = frac.trim_end_matches('0');
    let shown = if trimmed.len() < min_decimals {
        &frac[..min_decimals.min(frac.len())]
    } else {
        trimmed
    };
    if shown.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price_per_mtok("2.50"), Ok(PicoUsd(2_500_000)));
        assert_eq!(parse_price_per_mtok("2.5"), Ok(PicoUsd(2_500_000)));
        assert_eq!(parse_price_per_mtok("10"), Ok(PicoUsd(10_000_000)));
        assert_eq!(parse_price_per_mtok("0.075"), Ok(PicoUsd(75_000)));
        assert_eq!(parse_price_per_mtok("0.000001"), Ok(PicoUsd(1)));
        assert_eq!(parse_price_per_mtok("0.0000010"), Ok(PicoUsd(1)));
        assert_eq!(parse_price_per_mtok("0"), Ok(PicoUsd(0)));
        // 0.1 and 0.2 are not representable in binary; here they are exact.
        let sum = parse_price_per_mtok("0.1")
            .unwrap()
            .saturating_add(parse_price_per_mtok("0.2").unwrap());
        assert_eq!(sum, parse_price_per_mtok("0.3").unwrap());
    }

    #[test]
    fn bad_decimals_are_refused() {
        for bad in [
            "", ".5", "5.", "-1", "+1", "1e3", "1,5", " 1", "1.2.3", "NaN", "１",
        ] {
            assert!(
                matches!(parse_price_per_mtok(bad), Err(DecimalError::Syntax { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_price_per_mtok("0.0000001"),
            Err(DecimalError::TooPrecise {
                text: "0.0000001".into(),
                max: 6
            })
        );
        assert!(matches!(
            parse_price_per_mtok("99999999999999999"),
            Err(DecimalError::TooLarge { .. })
        ));
        assert!(matches!(
            PicoUsd::parse_usd("18446745"),
            Err(DecimalError::TooLarge { .. })
        ));
    }

    #[test]
    fn usd_amounts_parse_and_print_exactly() {
        assert_eq!(PicoUsd::parse_usd("5"), Ok(PicoUsd(5_000_000_000_000)));
        assert_eq!(PicoUsd::parse_usd("0.000000000001"), Ok(PicoUsd(1)));
        assert_eq!(PicoUsd(5_000_000_000_000).to_string(), "5.00");
        assert_eq!(PicoUsd(1_500_000_000_000).to_string(), "1.50");
        assert_eq!(PicoUsd(2_000_000).to_string(), "0.000002");
        assert_eq!(PicoUsd(1).to_string(), "0.000000000001");
        assert_eq!(PicoUsd(0).to_string(), "0.00");
        assert_eq!(PicoUsd::MAX.to_string(), "18446744.073709551615");
        assert_eq!(PicoUsd(2_500_000).per_mtok_string(), "2.5");
        assert_eq!(PicoUsd(10_000_000).per_mtok_string(), "10");
        assert_eq!(PicoUsd::from_usd_f64(0.25), Ok(PicoUsd(250_000_000_000)));
        assert_eq!(PicoUsd::from_usd_f64(5.0), Ok(PicoUsd(5_000_000_000_000)));
        assert!(PicoUsd::from_usd_f64(f64::NAN).is_err());
        assert!(PicoUsd::from_usd_f64(-1.0).is_err());
        assert_eq!(PicoUsd(1_250_000_000_000).to_usd_f64(), 1.25);
    }

    #[test]
    fn cost_arithmetic_is_exact_and_saturates() {
        // 1234 tokens at $2.50 per million = $0.003085 exactly.
        let price = parse_price_per_mtok("2.50").unwrap();
        assert_eq!(price.times(1234), PicoUsd::parse_usd("0.003085").unwrap());
        // One token at the smallest price: one pico-dollar.
        assert_eq!(PicoUsd(1).times(1), PicoUsd(1));
        assert_eq!(PicoUsd(u64::MAX / 2).times(3), PicoUsd::MAX);
        assert_eq!(PicoUsd::MAX.saturating_add(PicoUsd(1)), PicoUsd::MAX);
        assert_eq!(PicoUsd(1).saturating_sub(PicoUsd(2)), PicoUsd::ZERO);
    }
}
