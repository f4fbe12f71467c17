//! Kubernetes resource quantities ("32Mi", "100m", "1Gi") as the `WebAssembly` API carries them.
//!
//! The API server validates them with CEL (`isQuantity`); this module parses them on the Rust
//! side for the places that need a number (the runtime's memory cap, write quotas).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// A Kubernetes quantity such as `32Mi`, `1Gi`, `100m` or `2`.
///
/// The schema asks for a string (quote numbers: `cpu: "1"`), which keeps the CEL validation
/// cheap; the Rust side also reads bare numbers, and always writes a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value in whole bytes (or whole units), rounding up fractions; `None` if the text is
    /// not a quantity, is negative, or does not fit in a `u64`.
    pub fn to_bytes(&self) -> Option<u64> {
        parse_quantity(&self.0).and_then(|milli| {
            if milli < 0 {
                None
            } else {
                u64::try_from((milli + 999) / 1000).ok()
            }
        })
    }

    /// The value in thousandths ("100m" CPU → 100), or `None` if unparsable.
    pub fn to_milli(&self) -> Option<i128> {
        parse_quantity(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_owned())
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Quantity(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        }))
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity as a string, e.g. \"32Mi\", \"1Gi\", \"100m\", \"2\".",
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
                "message": "must be a positive Kubernetes quantity such as 32Mi, 1Gi or 100m"
            }]
        })
    }
}

/// Parses a quantity into thousandths of its unit. Mirrors the grammar in
/// k8s.io/apimachinery/pkg/api/resource (binary and decimal SI suffixes, exponents).
fn parse_quantity(s: &str) -> Option<i128> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'-' => (-1i128, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // Work in units of 10^-9 so "0.5m" and "1.5Gi" stay exact, then convert to milli.
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let frac_digits = frac_part.len().min(9);
    let frac: i128 = if frac_digits == 0 {
        0
    } else {
        frac_part[..frac_digits].parse::<i128>().ok()? * 10i128.pow(9 - frac_digits as u32)
    };
    let nano = int.checked_mul(1_000_000_000)?.checked_add(frac)?;
    let scaled_nano = match suffix {
        "" => nano,
        "Ki" => nano.checked_mul(1 << 10)?,
        "Mi" => nano.checked_mul(1 << 20)?,
        "Gi" => nano.checked_mul(1 << 30)?,
        "Ti" => nano.checked_mul(1 << 40)?,
        "Pi" => nano.checked_mul(1 << 50)?,
        "Ei" => nano.checked_mul(1 << 60)?,
        "n" => nano / 1_000_000_000,
        "u" => nano / 1_000_000,
        "m" => nano / 1_000,
        "k" => nano.checked_mul(1_000)?,
        "M" => nano.checked_mul(1_000_000)?,
        "G" => nano.checked_mul(1_000_000_000)?,
        "T" => nano.checked_mul(1_000_000_000_000)?,
        "P" => nano.checked_mul(1_000_000_000_000_000)?,
        "E" => nano.checked_mul(1_000_000_000_000_000_000)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e >= 0 {
                nano.checked_mul(10i128.checked_pow(u32::try_from(e).ok()?)?)?
            } else {
                nano / 10i128.checked_pow(u32::try_from(-e).ok()?)?
            }
        }
        _ => return None,
    };
    // nano-units → milli-units, rounding up like the API server does for sub-milli values.
    Some(sign * ((scaled_nano + 999_999) / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes_parse_to_bytes() {
        assert_eq!(Quantity::from("32Mi").to_bytes(), Some(32 * 1024 * 1024));
        assert_eq!(Quantity::from("1Gi").to_bytes(), Some(1 << 30));
        assert_eq!(Quantity::from("1.5Gi").to_bytes(), Some(3 << 29));
        assert_eq!(Quantity::from("128M").to_bytes(), Some(128_000_000));
        assert_eq!(Quantity::from("2").to_bytes(), Some(2));
        assert_eq!(Quantity::from("1e3").to_bytes(), Some(1000));
    }

    #[test]
    fn cpu_millis_parse() {
        assert_eq!(Quantity::from("100m").to_milli(), Some(100));
        assert_eq!(Quantity::from("0.5").to_milli(), Some(500));
        assert_eq!(Quantity::from("2").to_milli(), Some(2000));
    }

    #[test]
    fn garbage_and_negative_values_are_not_sizes() {
        for bad in ["", "Mi", "12Q", "1..2", "-1Gi", "abc"] {
            assert_eq!(Quantity::from(bad).to_bytes(), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_in_yaml_deserialize_as_quantities() -> anyhow::Result<()> {
        let q: Quantity = serde_json::from_str("2")?;
        assert_eq!(q.as_str(), "2");
        let q: Quantity = serde_json::from_str("0.5")?;
        assert_eq!(q.to_milli(), Some(500));
        Ok(())
    }
}
