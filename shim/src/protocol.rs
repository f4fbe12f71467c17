//! What the shim and the processes it starts from its own binary tell each other: the guest
//! (told to start; reports whether it is ready) and the precompile process (reports whether
//! the component is compiled). Each message is one JSON object on one line, built and read
//! only here, so both sides agree by construction.

use std::io::Write;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// First argument that makes the binary a guest process: `guest BUNDLE DIGEST`.
pub const GUEST_SUBCOMMAND: &str = "guest";
/// First argument that makes the binary compile a component into the node cache:
/// `precompile BUNDLE DIGEST`.
pub const PRECOMPILE_SUBCOMMAND: &str = "precompile";
/// The guest's last argument when the component was compiled for this start (a precompile
/// cache miss, which the guest's metrics report).
pub const COMPILED_NOW_ARG: &str = "--compiled-now";
/// Descriptor the guest reads [`ToGuest`] on.
pub const START_FD: i32 = 3;
/// Descriptor the guest writes its [`FromGuest`] report on.
pub const STATUS_FD: i32 = 4;
/// Descriptor of a route-netlink socket the shim opened in the node's network namespace: the
/// node's own addresses (blocked for the component unless listed literally) are read and
/// followed through it from the pod's namespace.
pub const NODE_NETLINK_FD: i32 = 5;

/// Shim → guest, on [`START_FD`]. End of file instead means: do not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ToGuest {
    /// Containerd started the container: run the component.
    Start,
}

/// Guest → shim, on [`STATUS_FD`], once, before the guest waits for [`ToGuest::Start`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum FromGuest {
    /// Loaded, confined, and waiting for the start.
    Ready,
    /// The node's precompile cache holds no recorded artifact for the component: the shim
    /// compiles it and starts a new guest. A warm cache (the common case) so costs no extra
    /// process.
    Uncompiled,
    /// The guest cannot run the component.
    Failed { error: Failure },
}

/// Precompile process → shim, on the process's stdout, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FromPrecompile {
    /// The compiled component is in the node's precompile cache.
    Compiled,
    Failed {
        error: Failure,
    },
}

/// An error that crossed from another process: its message, then each cause's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub chain: Vec<String>,
}

impl Failure {
    /// The error and its causes, at the edge of the process where it happened (the one place
    /// a chain becomes text: the other side has no types to rebuild it with).
    pub fn of(e: &dyn std::error::Error) -> Self {
        let mut chain = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            let text = c.to_string();
            // Many messages end with their cause's already ("reading x: no such file").
            if !chain.last().is_some_and(|last| last.ends_with(&text)) {
                chain.push(text);
            }
            cause = c.source();
        }
        Failure { chain }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.chain.join(": "))
    }
}

impl std::error::Error for Failure {}

/// A message and who sends it, for errors that say which side said something wrong.
pub trait Message: Serialize + DeserializeOwned {
    const SENDER: &'static str;
}

impl Message for ToGuest {
    const SENDER: &'static str = "the shim";
}

impl Message for FromGuest {
    const SENDER: &'static str = "the guest process";
}

impl Message for FromPrecompile {
    const SENDER: &'static str = "the precompile process";
}

/// Reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sender closed its end without a message (it exited, or was killed).
    #[error("{sender} ended without saying anything")]
    Silent { sender: &'static str },
    #[error("{sender} sent {line:?}, which is not a message of the protocol: {source}")]
    Garbled {
        sender: &'static str,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `message` as one line.
pub fn send<M: Message>(w: &mut impl Write, message: &M) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// The message in `text`, everything the sender wrote before closing its end.
pub fn receive<M: Message>(text: &str) -> Result<M, Error> {
    let line = text.trim();
    if line.is_empty() {
        return Err(Error::Silent { sender: M::SENDER });
    }
    serde_json::from_str(line).map_err(|source| Error::Garbled {
        sender: M::SENDER,
        line: line.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(message: M) {
        let mut line = Vec::new();
        send(&mut line, &message).expect("send");
        let text = String::from_utf8(line).expect("utf-8");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        assert_eq!(receive::<M>(&text).expect("receive"), message, "{text}");
    }

    fn failure() -> Failure {
        Failure {
            chain: vec!["invalid WebAssembly".into(), "bad magic".into()],
        }
    }

    #[test]
    fn every_message_round_trips_as_one_line() {
        round_trip(ToGuest::Start);
        round_trip(FromGuest::Ready);
        round_trip(FromGuest::Uncompiled);
        round_trip(FromGuest::Failed { error: failure() });
        round_trip(FromPrecompile::Compiled);
        round_trip(FromPrecompile::Failed { error: failure() });
    }

    #[test]
    fn a_message_is_tagged_json() {
        let mut line = Vec::new();
        send(&mut line, &FromGuest::Ready).expect("send");
        assert_eq!(line, b"{\"report\":\"ready\"}\n");
    }

    #[test]
    fn a_garbled_line_names_the_sender_the_line_and_the_problem() {
        let e = receive::<FromGuest>("ok").expect_err("not json");
        let text = e.to_string();
        assert!(
            text.starts_with("the guest process sent \"ok\", which is not a message"),
            "{text}"
        );
        assert!(matches!(e, Error::Garbled { .. }));
    }

    #[test]
    fn an_unknown_message_names_what_is_unknown() {
        let e = receive::<FromPrecompile>("{\"outcome\":\"maybe\"}").expect_err("unknown");
        assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
        let e = receive::<FromGuest>(r#"{"report":"failed","error":{"chain":[],"why":1}}"#)
            .expect_err("field");
        assert!(e.to_string().contains("unknown field `why`"), "{e}");
    }

    #[test]
    fn nothing_at_all_is_silence_not_garble() {
        let e = receive::<FromPrecompile>(" \n").expect_err("empty");
        assert_eq!(
            e.to_string(),
            "the precompile process ended without saying anything"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the component")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading x: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_failure_keeps_each_cause_once() {
        let e = Outer(Middle(std::io::Error::other("no such file")));
        let f = Failure::of(&e);
        assert_eq!(
            f.chain,
            ["loading the component", "reading x: no such file"]
        );
        assert_eq!(
            f.to_string(),
            "loading the component: reading x: no such file"
        );
    }
}
