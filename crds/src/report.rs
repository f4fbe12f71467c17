//! How an error reads where it leaves wa8s: a condition message, a container's termination
//! message, a CLI's last line, an HTTP 500 body.
//!
//! Inside wa8s errors stay typed and keep their causes as `#[source]`; they become text only
//! at those edges, through this one function, so every edge reads the same way.

use std::error::Error;

/// The error and its causes on one line, `outer: cause: root`.
///
/// A cause whose text the line already holds is skipped: some libraries print their source
/// in their own message as well as returning it from `source()`, and the reader should see
/// each cause once.
pub fn report(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Leaf(&'static str);

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Outer {
        text: &'static str,
        #[source]
        source: Leaf,
    }

    #[test]
    fn causes_follow_the_error_in_order_on_one_line() {
        let e = Outer {
            text: "ghcr.io: cannot connect",
            source: Leaf("connection refused"),
        };
        assert_eq!(report(&e), "ghcr.io: cannot connect: connection refused");
    }

    #[test]
    fn a_cause_the_message_already_prints_is_not_repeated() {
        let e = Outer {
            text: "request error: connection refused",
            source: Leaf("connection refused"),
        };
        assert_eq!(report(&e), "request error: connection refused");
    }

    #[test]
    fn an_error_without_causes_reads_as_itself() {
        assert_eq!(report(&Leaf("not found")), "not found");
    }
}
