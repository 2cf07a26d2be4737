//! The streams a gateway reads: the outbound stream, and one per channel with a
//! retention of its own (`[channel_options.<channel>] stream_max_age` /
//! `stream_max_bytes`, declared by [`crate::topology`]). Each is read once by its own
//! [`Hub`], with its own shared replays ([`Replays`]), and a session follows each with
//! an [`crate::outbound::Outbound`] of its own: positions of different streams are
//! unrelated, so a `deliver` names its channel stream (`stream`) and a resuming client
//! names a position per stream (`hello.positions`).
//!
//! A message goes to one stream only: the topology binds a channel's own stream with
//! `<channel>.#` and the outbound stream with each other channel, so a session finds
//! the keys of a channel in that channel's hub ([`Streams::of_key`]). Replies come back
//! through the outbound stream.

use std::sync::Arc;

use warren_protocol::amqp::{keys, Names};

use crate::config::Config;
use crate::hub::Hub;
use crate::replay::Replays;

/// One stream a gateway reads.
pub(crate) struct Source {
    /// `None` for the outbound stream; the channel of a channel stream.
    pub(crate) channel: Option<String>,
    /// The stream (queue) name.
    pub(crate) name: String,
    /// Its fan-out.
    pub(crate) hub: Arc<Hub>,
    /// Its readers shared by the sessions behind the hub's ring.
    pub(crate) replays: Arc<Replays>,
}

/// The gateway's streams: the outbound stream first, then the channel streams in the
/// order of `channels`.
pub(crate) struct Streams {
    all: Vec<Arc<Source>>,
}

impl Streams {
    /// The streams of `config` ([`plan`]), each made into a [`Source`] by `source`.
    pub(crate) fn new(
        config: &Config,
        source: impl FnMut((Option<String>, String)) -> Source,
    ) -> Streams {
        Streams {
            all: plan(config).into_iter().map(source).map(Arc::new).collect(),
        }
    }

    /// Every stream, the outbound stream first.
    pub(crate) fn all(&self) -> &[Arc<Source>] {
        &self.all
    }

    /// The index in [`Streams::all`] of the stream that holds the messages with
    /// routing key (or hub index key) `key` ([`index_of`]).
    pub(crate) fn of_key(&self, key: &str) -> usize {
        index_of(self.all.iter().map(|s| s.channel.as_deref()), key)
    }

    /// `keys` grouped by the stream that holds them ([`Streams::of_key`]), in the
    /// order of [`Streams::all`]; streams with none are left out.
    pub(crate) fn split(&self, keys: &[String]) -> Vec<(usize, Vec<String>)> {
        let mut out: Vec<(usize, Vec<String>)> = Vec::new();
        for k in keys {
            let i = self.of_key(k);
            match out.iter_mut().find(|(j, _)| *j == i) {
                Some((_, ks)) => ks.push(k.clone()),
                None => out.push((i, vec![k.clone()])),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }
}

/// The streams `config` asks for, as (channel, stream name): the outbound stream
/// first (no channel), then each channel stream in the order of `channels`.
pub(crate) fn plan(config: &Config) -> Vec<(Option<String>, String)> {
    let names = Names::new(&config.namespace);
    let mut all = vec![(None, names.outbound_stream())];
    for s in config.channel_streams() {
        let name = names.channel_stream(&s.channel);
        all.push((Some(s.channel), name));
    }
    all
}

/// Of streams whose channels are `channels` (the outbound stream's is `None`), the
/// index of the one holding routing key (or hub index key) `key`: its channel's own
/// stream, or else the outbound stream, which must come first (also for a reply's
/// key, which names no channel).
fn index_of<'a>(channels: impl Iterator<Item = Option<&'a str>>, key: &str) -> usize {
    let channel = keys::channel_of(key);
    channels
        .enumerate()
        .find(|(_, c)| *c == Some(channel))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelOptions;
    use crate::hub::reply_key;

    #[test]
    fn a_channel_with_its_own_retention_is_read_from_its_own_stream() {
        assert_eq!(
            plan(&Config::default()),
            [(None, "warren.out.stream".to_string())]
        );

        let mut config = Config {
            namespace: "t".into(),
            ..Config::default()
        };
        config.channel_options.insert(
            "voice".into(),
            ChannelOptions {
                stream_max_bytes: Some(1 << 20),
                ..ChannelOptions::default()
            },
        );
        assert_eq!(
            plan(&config),
            [
                (None, "t.warren.out.stream".to_string()),
                (
                    Some("voice".to_string()),
                    "t.warren.out.stream.voice".to_string()
                ),
            ]
        );
        let of = |key: &str| index_of([None, Some("voice")].into_iter(), key);
        assert_eq!(of("voice.all"), 1);
        assert_eq!(of("voice.user.ann"), 1);
        assert_eq!(of("chat.all"), 0);
        // A channel whose name starts like another's is not it.
        assert_eq!(of("voicemail.all"), 0);
        assert_eq!(of(&reply_key("sess-1")), 0);
    }
}
