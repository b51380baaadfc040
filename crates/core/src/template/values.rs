//! Values given literally or as `${...}` strings, and durations.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A value that is either given literally or as a string with `${...}`
/// references, resolved when the plan is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Tv<T> {
    /// A literal value.
    Lit(T),
    /// A string to interpolate, then parse.
    Expr(String),
}

impl<T: FromStr + Clone> Tv<T>
where
    T::Err: fmt::Display,
{
    /// The value, parsing an (already interpolated) string form.
    pub fn get(&self) -> Result<T, String> {
        match self {
            Tv::Lit(v) => Ok(v.clone()),
            Tv::Expr(s) => s
                .trim()
                .parse::<T>()
                .map_err(|e| format!("`{s}` is not a valid value: {e}")),
        }
    }
}

/// A duration written as `90s`, `5m`, `1h30m`, `250ms` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub std::time::Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".to_string());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Dur(std::time::Duration::from_secs(secs)));
        }
        let mut total = std::time::Duration::ZERO;
        let mut num = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let mut unit = String::from(c);
            while let Some(n) = chars.peek() {
                if n.is_ascii_alphabetic() {
                    unit.push(*n);
                    chars.next();
                } else {
                    break;
                }
            }
            let v: f64 = num
                .parse()
                .map_err(|_| format!("bad duration `{s}`: missing number before `{unit}`"))?;
            num.clear();
            let secs = match unit.as_str() {
                "ms" => v / 1000.0,
                "s" => v,
                "m" => v * 60.0,
                "h" => v * 3600.0,
                "d" => v * 86400.0,
                _ => {
                    return Err(format!(
                        "bad duration `{s}`: unknown unit `{unit}` (ms, s, m, h, d)"
                    ))
                }
            };
            total += std::time::Duration::from_secs_f64(secs);
        }
        if !num.is_empty() {
            return Err(format!("bad duration `{s}`: number `{num}` has no unit"));
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 5m, 1h30m or a number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(std::time::Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|v| Dur(std::time::Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> String {
        "Duration".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::SingleOrVec::Vec(vec![
                schemars::schema::InstanceType::String,
                schemars::schema::InstanceType::Integer,
            ])),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some("A duration: 90s, 5m, 1h30m, 250ms or seconds".to_string()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}
