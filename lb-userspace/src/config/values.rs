//! Value types of the config file that need more than serde's defaults:
//! durations ("5s"), sizes ("128KB"), listen addresses, and integers checked
//! against a range. Each rejects bad input while deserializing, so the error
//! carries the value's position in the file.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A duration written as a number and a unit: `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl FromStr for ConfigDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let allowed = "a duration such as \"250ms\", \"5s\", \"2m\" or \"1h\"";
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not {allowed}"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{s}` is not {allowed}")),
        };
        Ok(Self(d))
    }
}

/// A byte size written with a unit: `"16KB"`, `"128KB"`, `"1MB"`, `"512B"`
/// (KB = 1024 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

impl FromStr for ConfigSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let allowed = "a size such as \"128KB\", \"1MB\" or \"512B\"";
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not {allowed}"))?;
        let mult = match unit.to_ascii_uppercase().as_str() {
            "B" => 1,
            "KB" | "K" => 1024,
            "MB" | "M" => 1024 * 1024,
            _ => return Err(format!("`{s}` is not {allowed}")),
        };
        Ok(Self(n.saturating_mul(mult)))
    }
}

/// A listen address (a VIP): `"10.0.0.1:443"` or `"[2001:db8::1]:443"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<SocketAddr>().map(Self).map_err(|_| {
            format!(
                "`{s}` is not an address and port; use IP:PORT such as \"10.0.0.1:443\" \
                 or \"[2001:db8::1]:443\""
            )
        })
    }
}

/// Deserializes any `FromStr` type from a TOML string.
macro_rules! from_string {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    )*};
}
from_string!(
    ConfigDuration => "a duration string such as \"5s\"",
    ConfigSize => "a size string such as \"128KB\"",
    Listen => "an address string such as \"10.0.0.1:443\"",
);

/// An integer that must lie in `MIN..=MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ranged<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        match u64::try_from(v) {
            Ok(v) if (MIN..=MAX).contains(&v) => Ok(Self(v)),
            _ => Err(de::Error::custom(format!(
                "{v} is out of range; allowed {MIN}..={MAX}"
            ))),
        }
    }
}

/// A size that must lie in `MIN..=MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangedSize<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for RangedSize<MIN, MAX> {
    /// A size string (`"128KB"`), or a number of bytes (what the admin API
    /// shows, so a value read from it can be sent back).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size string such as \"128KB\", or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("{v} bytes is negative")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
                s.parse::<ConfigSize>().map(|c| c.0).map_err(E::custom)
            }
        }
        let v = d.deserialize_any(V)?;
        if (MIN..=MAX).contains(&v) {
            Ok(Self(v))
        } else {
            Err(de::Error::custom(format!(
                "{v} bytes is out of range; allowed {}KB..={}KB",
                MIN / 1024,
                MAX / 1024
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(
            "250ms".parse::<ConfigDuration>(),
            Ok(ConfigDuration(Duration::from_millis(250)))
        );
        assert_eq!(
            "2m".parse::<ConfigDuration>(),
            Ok(ConfigDuration(Duration::from_secs(120)))
        );
        assert!("5".parse::<ConfigDuration>().is_err());
        assert!("5 s".parse::<ConfigDuration>().is_err());
        assert!("s".parse::<ConfigDuration>().is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("128KB".parse::<ConfigSize>(), Ok(ConfigSize(131_072)));
        assert_eq!("1MB".parse::<ConfigSize>(), Ok(ConfigSize(1_048_576)));
        assert!("128".parse::<ConfigSize>().is_err());
        assert!("12GB".parse::<ConfigSize>().is_err());
    }

    #[test]
    fn ranged_sizes_take_a_unit_string_or_bytes() {
        type Buf = RangedSize<{ 16 * 1024 }, { 256 * 1024 }>;
        let parse = |v: serde_json::Value| serde_json::from_value::<Buf>(v).map(|b| b.0);
        assert_eq!(parse(serde_json::json!("128KB")).unwrap(), 131_072);
        assert_eq!(parse(serde_json::json!(131_072)).unwrap(), 131_072);
        assert!(parse(serde_json::json!(-1)).is_err());
        assert!(parse(serde_json::json!("128")).is_err());
        let e = parse(serde_json::json!(1024)).unwrap_err().to_string();
        assert!(e.contains("allowed 16KB..=256KB"), "{e}");
    }

    #[test]
    fn listen_accepts_v4_and_v6_and_names_the_bad_value() {
        assert!("10.0.0.1:443".parse::<Listen>().is_ok());
        assert!("[2001:db8::1]:443".parse::<Listen>().is_ok());
        let err = "web.example:443".parse::<Listen>().unwrap_err();
        assert!(err.contains("web.example:443"), "{err}");
        assert!("10.0.0.1".parse::<Listen>().is_err());
    }
}
