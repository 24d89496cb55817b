//! Reading a plugin's settings table (`[plugins.settings.NAME]`, passed as JSON): every key
//! optional (absent or null: `None`), a key of the wrong type refused with an
//! `InvalidArgument` that names the plugin, the key and what it must be.

use std::ops::{RangeBounds, RangeInclusive};
use std::time::Duration;

use serde_json::Value;

use crate::{PluginError, PluginResult};

/// A plugin's settings, read key by key.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    plugin: &'a str,
    value: &'a Value,
}

impl<'a> Table<'a> {
    /// `value` must be a table (or null: no settings).
    pub fn new(plugin: &'a str, value: &'a Value) -> PluginResult<Self> {
        if !value.is_object() && !value.is_null() {
            return Err(PluginError::InvalidArgument(format!(
                "{plugin} settings must be a table"
            )));
        }
        Ok(Self { plugin, value })
    }

    /// The error for `key` not being `want`: `NAME setting KEY must be WANT`.
    pub fn bad(&self, key: &str, want: &str) -> PluginError {
        PluginError::InvalidArgument(format!("{} setting {key} must be {want}", self.plugin))
    }

    /// The value of `key`, if set (not absent, not null).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// A non-empty string.
    pub fn string(&self, key: &str) -> PluginResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "a non-empty string")),
        }
    }

    /// A non-empty array of strings.
    pub fn strings(&self, key: &str) -> PluginResult<Option<Vec<String>>> {
        let want = "a non-empty array of strings";
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.bad(key, want)),
            Some(_) => Err(self.bad(key, want)),
        }
    }

    /// A number of seconds (finite, not negative) within `range`; `want` says what is accepted.
    pub fn seconds(
        &self,
        key: &str,
        range: impl RangeBounds<f64>,
        want: &str,
    ) -> PluginResult<Option<Duration>> {
        self.parsed(key, want, |n| {
            n.as_f64()
                .filter(|s| range.contains(s))
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        })
    }

    /// A whole number within `range`; `want` says what is accepted.
    pub fn whole(
        &self,
        key: &str,
        range: RangeInclusive<u64>,
        want: &str,
    ) -> PluginResult<Option<u64>> {
        self.parsed(key, want, |n| n.as_u64().filter(|w| range.contains(w)))
    }

    /// Any other kind of value: `read` returns `None` for a value that is not `want`.
    pub fn parsed<T>(
        &self,
        key: &str,
        want: &str,
        read: impl FnOnce(&Value) -> Option<T>,
    ) -> PluginResult<Option<T>> {
        self.get(key)
            .map(|v| read(v).ok_or_else(|| self.bad(key, want)))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::ops::Bound;

    fn message<T: std::fmt::Debug>(r: PluginResult<T>) -> String {
        match r {
            Err(PluginError::InvalidArgument(m)) => m,
            other => format!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn only_a_table_or_null() {
        assert!(Table::new("p", &Value::Null).is_ok());
        assert_eq!(
            message(Table::new("p", &json!([1]))),
            "p settings must be a table"
        );
    }

    #[test]
    fn absent_and_null_are_unset() {
        let v = json!({"a": null});
        let t = Table::new("p", &v).unwrap();
        assert_eq!(t.string("a").unwrap(), None);
        assert_eq!(t.strings("b").unwrap(), None);
        assert_eq!(t.seconds("a", 0.0..=1.0, "x").unwrap(), None);
        assert_eq!(t.whole("b", 0..=1, "x").unwrap(), None);
    }

    #[test]
    fn typed_values_and_clear_errors() {
        let v = json!({"s": "x", "e": "", "l": ["a", "b"], "bl": ["a", 1], "n": 2.5,
            "z": 0, "w": 4});
        let t = Table::new("p", &v).unwrap();
        assert_eq!(t.string("s").unwrap().as_deref(), Some("x"));
        assert_eq!(
            message(t.string("e")),
            "p setting e must be a non-empty string"
        );
        assert_eq!(t.strings("l").unwrap().unwrap(), ["a", "b"]);
        assert_eq!(
            message(t.strings("bl")),
            "p setting bl must be a non-empty array of strings"
        );
        assert_eq!(
            message(t.strings("s")),
            "p setting s must be a non-empty array of strings"
        );
        assert_eq!(
            t.seconds("n", 0.0..=3.0, "x").unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            message(t.seconds("n", 0.0..=2.0, "short")),
            "p setting n must be short"
        );
        let above_zero = (Bound::Excluded(0.0), Bound::Included(9.0));
        assert_eq!(
            message(t.seconds("z", above_zero, "above 0")),
            "p setting z must be above 0"
        );
        assert_eq!(t.whole("w", 1..=4, "x").unwrap(), Some(4));
        assert_eq!(
            message(t.whole("n", 0..=9, "whole")),
            "p setting n must be whole"
        );
        assert_eq!(
            message(t.whole("s", 0..=9, "whole")),
            "p setting s must be whole"
        );
    }
}
