//! [`Positions`]: a client's position in each channel stream, by channel
//! (`hello.positions`, `welcome.positions`).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most entries a [`Positions`] read from JSON may have: more channel streams than
/// a gateway may be configured with (its configuration refuses more). Each entry is
/// looked up among the others as it is read, so a `hello` of 64 KiB naming 9,000 short
/// channels cost about 40 million comparisons before the token was checked.
pub const MAX_POSITIONS: usize = 256;

/// A position per channel stream, by channel; a JSON object such as `{"voice": 912}`.
/// A short list rather than a map: a few channels at most have a stream of their own.
/// Two are equal when they hold the same positions, in any order.
#[derive(Debug, Clone, Default, Eq)]
pub struct Positions(Vec<(String, u64)>);

impl Positions {
    /// No positions.
    pub fn new() -> Positions {
        Positions(Vec::new())
    }

    /// The position in `channel`'s stream, if there is one.
    pub fn get(&self, channel: &str) -> Option<u64> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, p)| *p)
    }

    /// Sets the position in `channel`'s stream.
    pub fn insert(&mut self, channel: String, position: u64) {
        match self.0.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, p)) => *p = position,
            None => self.0.push((channel, position)),
        }
    }

    /// Records `position` in `channel`'s stream unless a newer one is there already:
    /// positions only grow.
    pub fn raise(&mut self, channel: &str, position: u64) {
        match self.0.iter_mut().find(|(c, _)| c == channel) {
            Some((_, p)) => *p = (*p).max(position),
            None => self.0.push((channel.to_string(), position)),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many channels have one.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Each channel and its position, in the order they were first recorded.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(c, p)| (c.as_str(), *p))
    }
}

impl PartialEq for Positions {
    fn eq(&self, other: &Positions) -> bool {
        self.len() == other.len() && self.iter().all(|(c, p)| other.get(c) == Some(p))
    }
}

impl FromIterator<(String, u64)> for Positions {
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(entries: I) -> Positions {
        let mut out = Positions::new();
        for (channel, position) in entries {
            out.insert(channel, position);
        }
        out
    }
}

impl Serialize for Positions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (channel, position) in &self.0 {
            map.serialize_entry(channel, position)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Positions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Positions, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Positions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of stream positions by channel")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Positions, A::Error> {
                let mut out = Positions::new();
                while let Some((channel, position)) = map.next_entry::<String, u64>()? {
                    if out.len() == MAX_POSITIONS {
                        return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                    }
                    out.insert(channel, position);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_positions_entries_are_read() {
        let object = |n: usize| {
            let entries: Vec<String> = (0..n).map(|i| format!("\"c{i}\":{i}")).collect();
            format!("{{{}}}", entries.join(","))
        };
        let full: Positions = serde_json::from_str(&object(MAX_POSITIONS)).unwrap();
        assert_eq!(full.len(), MAX_POSITIONS);
        let err = serde_json::from_str::<Positions>(&object(MAX_POSITIONS + 1)).unwrap_err();
        assert!(err.to_string().contains("invalid length 257"), "{err}");
        // What a 64 KiB hello could name: refused at entry 257, not read whole.
        let err = serde_json::from_str::<Positions>(&object(9_000)).unwrap_err();
        assert!(err.to_string().contains("invalid length 257"), "{err}");
    }

    #[test]
    fn positions_read_and_write_a_json_object_and_only_grow_when_raised() {
        let p: Positions = serde_json::from_str(r#"{"voice": 912, "alerts": 3}"#).unwrap();
        assert_eq!(p.get("voice"), Some(912));
        assert_eq!(p.get("alerts"), Some(3));
        assert_eq!(p.get("chat"), None);
        assert_eq!(p.len(), 2);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"voice":912,"alerts":3}"#,
            "in the order received"
        );
        let same: Positions = serde_json::from_str(r#"{"alerts": 3, "voice": 912}"#).unwrap();
        assert_eq!(p, same, "equal in any order");
        let mut q = p.clone();
        q.raise("voice", 900);
        assert_eq!(
            q.get("voice"),
            Some(912),
            "an older position changes nothing"
        );
        q.raise("voice", 913);
        q.raise("chat", 1);
        assert_eq!(
            q.iter().collect::<Vec<_>>(),
            [("voice", 913), ("alerts", 3), ("chat", 1)]
        );
        assert_ne!(q, p);
        q.insert("voice".into(), 5);
        assert_eq!(q.get("voice"), Some(5), "insert sets");
        assert!(serde_json::from_str::<Positions>(r#"{"voice": -1}"#).is_err());
        assert!(serde_json::from_str::<Positions>("[1]").is_err());
        assert!(Positions::default().is_empty());
    }
}
