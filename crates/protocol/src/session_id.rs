//! Session ids: random u64s shown as 16 upper-case hex digits, as users of mirrord know them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a session id (expected 16 hex digits, as shown by `mirrordctl status`)")]
pub struct ParseSessionIdError(String);

impl FromStr for SessionId {
    type Err = ParseSessionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || t.len() > 16 {
            return Err(ParseSessionIdError(s.to_owned()));
        }
        u64::from_str_radix(t, 16)
            .map(SessionId)
            .map_err(|_| ParseSessionIdError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_sixteen_upper_hex_digits_and_parses_back() {
        let id = SessionId(0x1f2e);
        assert_eq!(id.to_string(), "0000000000001F2E");
        assert_eq!("0000000000001f2e".parse::<SessionId>().unwrap(), id);
        assert!("xyz".parse::<SessionId>().is_err());
        assert!("11112222333344445".parse::<SessionId>().is_err());
    }
}
