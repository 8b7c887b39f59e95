//! Durations written as `"90s"`, `"5m"`, `"2h"`, `"3d"` (or a bare number of seconds).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number with a unit s, m, h or d, like \"5m\"")]
pub struct DurationError(pub String);

impl std::str::FromStr for ConfigDuration {
    type Err = DurationError;
    fn from_str(text: &str) -> Result<Self, DurationError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| DurationError(text.into()))?;
        let unit_s = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(DurationError(text.into())),
        };
        number
            .checked_mul(unit_s)
            .map(|s| ConfigDuration(Duration::from_secs(s)))
            .ok_or_else(|| DurationError(text.into()))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "0s"),
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(s) => Ok(ConfigDuration(Duration::from_secs(s))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("90s".parse(), Ok(ConfigDuration(Duration::from_secs(90))));
        assert_eq!("5m".parse(), Ok(ConfigDuration(Duration::from_secs(300))));
        assert_eq!("2h".parse(), Ok(ConfigDuration(Duration::from_secs(7200))));
        assert_eq!(
            "3d".parse(),
            Ok(ConfigDuration(Duration::from_secs(259_200)))
        );
        assert!("5x".parse::<ConfigDuration>().is_err());
        assert!("m".parse::<ConfigDuration>().is_err());
    }

    #[test]
    fn displays_largest_unit() {
        assert_eq!(ConfigDuration(Duration::from_secs(7200)).to_string(), "2h");
        assert_eq!(ConfigDuration(Duration::from_secs(90)).to_string(), "90s");
    }
}
