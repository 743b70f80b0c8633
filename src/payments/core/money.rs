//! Amounts in minor units and their decimal form for providers (by the currency's ISO 4217 exponent).

use iso_currency::Currency;

use std::{
    fmt,
    ops::{Add, AddAssign, Sub, SubAssign},
};

use serde::{Deserialize, Serialize};

/// An amount in its currency's minor units (cents for USD, won for KRW). Serialized as the bare
/// integer, so stored snapshots and webhook bodies read as before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MinorUnits(pub i64);

impl MinorUnits {
    pub const ZERO: Self = Self(0);
}

impl From<MinorUnits> for i64 {
    fn from(amount: MinorUnits) -> Self {
        amount.0
    }
}

impl fmt::Display for MinorUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Add for MinorUnits {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }
}

impl Sub for MinorUnits {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        Self(self.0 - other.0)
    }
}

impl AddAssign for MinorUnits {
    fn add_assign(&mut self, other: Self) {
        self.0 += other.0;
    }
}

impl SubAssign for MinorUnits {
    fn sub_assign(&mut self, other: Self) {
        self.0 -= other.0;
    }
}

/// A validated ISO 4217 currency that has a minor-unit exponent (so not XAU, XDR, ...).
pub fn parse_currency(code: &str) -> Option<Currency> {
    let currency = Currency::from_code(code)?;
    currency.exponent()?;
    Some(currency)
}

/// `999` USD -> `"9.99"`, `1000` USD -> `"10"`, `15000` KRW -> `"15000"`, `1500` BHD -> `"1.5"`.
/// Trailing zeros of the fraction are dropped, as Paymentwall's own examples write amounts.
pub fn to_decimal_string(amount: MinorUnits, currency: Currency) -> String {
    let exponent = u32::from(currency.exponent().unwrap_or(0));
    let negative = amount.0 < 0;
    let digits = amount.0.unsigned_abs();
    let scale = 10u64.pow(exponent);
    let (whole, fraction) = (digits / scale, digits % scale);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&whole.to_string());
    if fraction > 0 {
        let fraction = format!("{fraction:0width$}", width = exponent as usize);
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(amount: i64, code: &str) -> String {
        to_decimal_string(MinorUnits(amount), parse_currency(code).expect("known currency"))
    }

    #[test]
    fn converts_by_the_currency_exponent() {
        assert_eq!(fmt(999, "USD"), "9.99");
        assert_eq!(fmt(1000, "USD"), "10");
        assert_eq!(fmt(1050, "USD"), "10.5");
        assert_eq!(fmt(5, "USD"), "0.05");
        assert_eq!(fmt(15000, "KRW"), "15000");
        assert_eq!(fmt(1, "JPY"), "1");
        assert_eq!(fmt(1500, "BHD"), "1.5");
        assert_eq!(fmt(1234, "BHD"), "1.234");
        assert_eq!(fmt(i64::MAX, "USD"), "92233720368547758.07");
    }

    #[test]
    fn unknown_and_exponentless_currencies_are_refused() {
        assert!(parse_currency("XXX").is_none());
        assert!(parse_currency("ZZZ").is_none());
        assert!(parse_currency("usd").is_none());
        assert!(parse_currency("XAU").is_none());
        assert!(parse_currency("EUR").is_some());
    }
}
