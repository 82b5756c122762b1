//! Human units in the config file: durations ("250ms", "5s", "10min") and byte sizes
//! ("16MB", "64MiB", plain integers). Operators write these by hand, so a value without
//! a unit is refused for durations (is `5` seconds or milliseconds?) while a plain
//! integer is unambiguous for sizes (bytes).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A size in bytes. Its own type so it can be written with a unit in YAML and is never
/// confused with a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub const fn bytes(self) -> usize {
        self.0
    }
}

/// Suffixes, longest first so "MiB" is tried before "B". Decimal units are powers of
/// 1000 and binary units powers of 1024, as everywhere else ("16MB" != "16MiB").
const SIZE_UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

/// Parses "16MB", "64MiB", "1 KiB", "4096" or "4096B" into bytes.
pub fn parse_size(text: &str) -> Result<ByteSize, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number of bytes such as 4096, 16MB or 64MiB"
        ));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let unit = unit.trim_start();
    let multiplier = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("invalid size {text:?}: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB or GiB)")
            })?
    };
    number
        .checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .map(ByteSize)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the size exactly, so the value
    /// round-trips through [`parse_size`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            let bytes = self.0 as u64;
            if bytes != 0 && bytes.is_multiple_of(m) {
                return write!(f, "{}{name}", bytes / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 4096, 16MB or 64MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a humantime duration ("250ms", "5s", "1m 30s"). A bare number is refused:
/// its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. 250ms, 5s, 10min)"))
}

/// `#[serde(with = "units::duration")]` for `Duration` fields.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as 250ms, 5s or 10min")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit (write e.g. {v}s or {v}ms)"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit (write e.g. {v}s or {v}ms)"
                )))
            }
        }
        d.deserialize_any(V)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }
}

/// A bound that can be switched off: "off" (or a zero value) is `None`.
fn is_off(text: &str) -> bool {
    matches!(text.trim(), "off" | "none" | "false")
}

/// Parses a duration bound: "off" or a zero duration disables it.
pub fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    if is_off(text) {
        return Ok(None);
    }
    let d = parse_duration(text).map_err(|e| format!("{e}, or off to switch the bound off"))?;
    Ok((!d.is_zero()).then_some(d))
}

/// Parses a size bound: "off" or 0 disables it.
pub fn parse_optional_size(text: &str) -> Result<Option<ByteSize>, String> {
    if is_off(text) {
        return Ok(None);
    }
    let s = parse_size(text).map_err(|e| format!("{e}, or off to switch the bound off"))?;
    Ok((s.0 != 0).then_some(s))
}

/// `#[serde(with = "units::optional_duration")]`: a duration, or `off` / `0s` for none.
pub mod optional_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as 1s or 500ms, or off")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_optional_duration(v).map_err(E::custom)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                // YAML 1.1 readers may turn a bare `off` into false.
                match v {
                    false => Ok(None),
                    true => Err(E::custom("expected a duration or off")),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match v {
                    0 => Ok(None),
                    _ => Err(E::custom(format!(
                        "duration {v} has no unit (write e.g. {v}s or {v}ms)"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom("duration must not be negative")),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_str("off"),
        }
    }
}

/// `#[serde(with = "units::optional_size")]`: a size, or `off` / `0` for none.
pub mod optional_size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Option<ByteSize>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 16MB or 64MiB, or off")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_optional_size(v).map_err(E::custom)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                match v {
                    false => Ok(None),
                    true => Err(E::custom("expected a size or off")),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                let s = usize::try_from(v).map_err(|_| E::custom("size too large"))?;
                Ok((s != 0).then_some(ByteSize(s)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom("size must not be negative")),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }

    pub fn serialize<S: Serializer>(value: &Option<ByteSize>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(b) => s.collect_str(b),
            None => s.serialize_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn optional_bounds() {
        assert_eq!(parse_optional_duration("off"), Ok(None));
        assert_eq!(parse_optional_duration("0s"), Ok(None));
        assert_eq!(
            parse_optional_duration(" 1s "),
            Ok(Some(Duration::from_secs(1)))
        );
        assert!(parse_optional_duration("1").is_err());
        assert_eq!(parse_optional_size("off"), Ok(None));
        assert_eq!(parse_optional_size("0"), Ok(None));
        assert_eq!(parse_optional_size("16MB"), Ok(Some(ByteSize(16_000_000))));
        assert!(parse_optional_size("lots").is_err());
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<usize>)] = &[
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("4096B", Some(4096)),
            ("16MB", Some(16_000_000)),
            ("16 MB", Some(16_000_000)),
            ("1kB", Some(1000)),
            ("1KB", Some(1000)),
            ("64MiB", Some(64 << 20)),
            ("2GiB", Some(2 << 30)),
            (" 1KiB ", Some(1024)),
            ("", None),
            ("MB", None),
            ("-1", None),
            ("1.5MB", None),
            ("16mb", None),
            ("16 XB", None),
            ("99999999999999999999", None),
            ("18446744073709551615KiB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).ok().map(|b| b.0), *want, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(Duration::from_millis(250))),
            ("5s", Some(Duration::from_secs(5))),
            ("10min", Some(Duration::from_secs(600))),
            ("1m 30s", Some(Duration::from_secs(90))),
            ("0s", Some(Duration::ZERO)),
            ("5", None),
            ("", None),
            ("five seconds", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn size_display_round_trips(n in 0usize..(1 << 50)) {
            let shown = ByteSize(n).to_string();
            prop_assert_eq!(parse_size(&shown), Ok(ByteSize(n)));
        }

        #[test]
        fn size_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }
    }
}
