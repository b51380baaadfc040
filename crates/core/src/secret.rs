//! Secrets that redact themselves.
//!
//! A [`Secret`] never prints its value through `Debug`, `Display` or `serde`
//! serialization. The process-wide [`Redactor`] additionally knows every
//! secret value registered during a build and scrubs it from any text that
//! leaves the process (log lines, `--json` events, journal and manifest), as a
//! second line of defence for values that were copied out of a `Secret` (for
//! example a password typed into a remote command's stdin that a buggy script
//! echoes back).

use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The text that replaces a secret value wherever it would be shown.
pub const REDACTED: &str = "[REDACTED]";

/// A value that must never be shown: passwords, private keys, cloud credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wrap a value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself. Callers must not log or format what they get here.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Take the value out.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl Secret<String> {
    /// Wrap a string and register it with the global [`Redactor`] so that any
    /// copy of it that reaches an output is scrubbed too.
    pub fn registered(value: impl Into<String>) -> Self {
        let value = value.into();
        redactor().register(&value);
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

thread_local! {
    static EXPOSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with secrets serializing their real value on this thread. Only
/// for in-memory transformations (template interpolation), never for output.
pub fn with_exposed<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPOSE.with(|e| e.set(false));
        }
    }
    EXPOSE.with(|e| e.set(true));
    let _reset = Reset;
    f()
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if EXPOSE.with(|e| e.get()) {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Secret<T> {
    fn schema_name() -> String {
        T::schema_name()
    }
    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        T::json_schema(gen)
    }
}

/// Scrubs registered secret values from text.
#[derive(Default)]
pub struct Redactor {
    values: RwLock<Vec<Arc<str>>>,
}

/// Secrets shorter than this are not scrubbed from free text: a one-letter
/// "password" would turn every log line into confetti. Such values are still
/// hidden wherever they are held in a [`Secret`].
pub const MIN_REDACT_LEN: usize = 4;

impl Redactor {
    /// Remember a value to scrub. Multi-line values (private keys) are also
    /// registered line by line, since output is usually handled per line.
    pub fn register(&self, value: &str) {
        let mut parts: Vec<&str> = vec![value];
        if value.contains('\n') {
            parts.extend(
                value
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with("-----")),
            );
        }
        if let Ok(mut values) = self.values.write() {
            for p in parts {
                if p.len() >= MIN_REDACT_LEN && !values.iter().any(|v| &**v == p) {
                    values.push(Arc::from(p));
                }
            }
            // Longest first, so that a whole key is replaced before its lines.
            values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// Replace every registered value in `text`.
    pub fn scrub(&self, text: &str) -> String {
        let Ok(values) = self.values.read() else {
            return text.to_string();
        };
        let mut out = text.to_string();
        for v in values.iter() {
            if out.contains(&**v) {
                out = out.replace(&**v, REDACTED);
            }
        }
        out
    }

    /// True when no secret has been registered.
    pub fn is_empty(&self) -> bool {
        self.values.read().map(|v| v.is_empty()).unwrap_or(true)
    }
}

/// The process-wide redactor.
pub fn redactor() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(Redactor::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_json_hide_the_value() {
        let s = Secret::new("hunter2-very-secret".to_string());
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn redactor_scrubs_values_and_key_lines() {
        let r = Redactor::default();
        r.register("c1oudc0w-build-pass");
        r.register("-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFFGGGG\n-----END KEY-----\n");
        let line = "sudo: password c1oudc0w-build-pass and EEEEFFFFGGGG leaked";
        let s = r.scrub(line);
        assert!(!s.contains("c1oudc0w-build-pass"), "{s}");
        assert!(!s.contains("EEEEFFFFGGGG"), "{s}");
        assert!(s.contains(REDACTED));
    }

    #[test]
    fn short_values_are_not_scrubbed_from_text() {
        let r = Redactor::default();
        r.register("ab");
        assert_eq!(r.scrub("abc"), "abc");
    }
}
