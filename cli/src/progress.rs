//! Progress of a push or pull on a terminal: bytes, rate and time left on one line of
//! standard error, redrawn at most ten times a second and cleared at the end. Nothing at all
//! when standard error is not a terminal (a pipe, a CI log) or with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress line for `label` (`pushing ghcr.io/…`), or `None` where none is drawn.
pub fn bar(label: &str, quiet: bool) -> Option<wa8s_oci::Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let label = label.to_owned();
    let started = Instant::now();
    let mut drawn: Option<Instant> = None;
    Some(Box::new(move |done, total| {
        let now = Instant::now();
        let finished = done >= total;
        if !finished && drawn.is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        drawn = Some(now);
        let mut err = std::io::stderr().lock();
        let _ = if finished {
            // The command's own summary line follows.
            write!(err, "\r\x1b[K")
        } else {
            write!(
                err,
                "\r{}\x1b[K",
                render(&label, done, total, now - started)
            )
        };
        let _ = err.flush();
    }))
}

/// One progress line: `pushing x  3.2/20.0 MiB  4.1 MiB/s  ETA 5s`.
pub fn render(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let eta = if rate > 0.0 && total > done {
        format!("ETA {}s", ((total - done) as f64 / rate).ceil() as u64)
    } else {
        "ETA -".to_owned()
    };
    format!(
        "{label}  {:.1}/{:.1} MiB  {:.1} MiB/s  {eta}",
        done as f64 / MIB,
        total as f64 / MIB,
        rate / MIB
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_bytes_rate_and_time_left() {
        let mib = 1024 * 1024;
        assert_eq!(
            render("pushing r", 5 * mib, 20 * mib, Duration::from_secs(2)),
            "pushing r  5.0/20.0 MiB  2.5 MiB/s  ETA 6s"
        );
        assert_eq!(
            render("pulling r", 0, 20 * mib, Duration::ZERO),
            "pulling r  0.0/20.0 MiB  0.0 MiB/s  ETA -"
        );
    }
}
