//! Progress bars for the CLI's long work (`bench`, `bench-feed`, `dlq
//! replay`, `templates import`): drawn on stderr when it is a terminal, and
//! hidden otherwise, so a log or a pipe gets the command's own lines, not
//! bar redraws.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps (0: set later) drawn with `template` (indicatif's
/// syntax, e.g. `{bar:40} {pos}/{len} {msg}`), hidden when stderr is not a
/// terminal. The bool says whether it shows, for commands that print
/// progress lines instead when it does not.
pub fn bar(len: u64, template: &str) -> (ProgressBar, bool) {
    let bar = ProgressBar::new(len);
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        // A template is a constant of the caller; a typo falls back to the
        // default style rather than failing the command.
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    (bar, terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_off_a_terminal_is_hidden() {
        // Tests run with stderr captured or piped, never a terminal.
        if !std::io::stderr().is_terminal() {
            let (bar, shown) = bar(10, "{bar} {pos}/{len}");
            assert!(!shown);
            assert!(bar.is_hidden());
        }
    }
}
