//! The delivery channels, one sender topic each.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A delivery channel. On the wire (Avro records, topic names, preferences)
/// it is the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Ios,
    Android,
    Sms,
    Email,
    /// Web push to a browser subscription (RFC 8030).
    Web,
    /// The user's in-app inbox (the bell): stored by tidings itself and read
    /// through `/v1/me/notifications`. Its one target is the user id.
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Ios,
        Channel::Android,
        Channel::Sms,
        Channel::Email,
        Channel::Web,
        Channel::InApp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Ios => "ios",
            Channel::Android => "android",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Web => "web",
            Channel::InApp => "in_app",
        }
    }
}

/// The gRPC enum and this one, mapped in this one place.
impl Channel {
    /// `None` for `CHANNEL_UNSPECIFIED` and numbers the proto does not know.
    pub fn from_proto(raw: i32) -> Option<Self> {
        use crate::proto::v1::Channel as Pb;
        match Pb::try_from(raw).ok()? {
            Pb::Ios => Some(Channel::Ios),
            Pb::Android => Some(Channel::Android),
            Pb::Sms => Some(Channel::Sms),
            Pb::Email => Some(Channel::Email),
            Pb::Web => Some(Channel::Web),
            Pb::InApp => Some(Channel::InApp),
            Pb::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> crate::proto::v1::Channel {
        use crate::proto::v1::Channel as Pb;
        match self {
            Channel::Ios => Pb::Ios,
            Channel::Android => Pb::Android,
            Channel::Sms => Pb::Sms,
            Channel::Email => Pb::Email,
            Channel::Web => Pb::Web,
            Channel::InApp => Pb::InApp,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown channel `{0}` (expected ios, android, sms, email, web or in_app)")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
        }
        assert!("pigeon".parse::<Channel>().is_err());
        for c in Channel::ALL {
            assert_eq!(Channel::from_proto(c.to_proto() as i32), Some(c));
        }
        assert_eq!(Channel::from_proto(0), None);
        assert_eq!(Channel::from_proto(99), None);
    }
}
