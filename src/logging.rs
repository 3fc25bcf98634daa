//! Logging. Text logs escape control characters in every field and message: names in the
//! kubelet tree come from tenants, and a volume named `x\n<date> INFO ...` must not forge
//! a log line, nor an escape sequence repaint a terminal. JSON logs are escaped by JSON.

use std::borrow::Cow;
use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt;

use crate::cli::LogFormat;

/// `s` with every control character written as an escape (`\n`, `\t`, `\u{1b}`).
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Installs the global subscriber: `filter` as `RUST_LOG` takes it, to stderr.
pub fn init(filter: &str, format: LogFormat) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => {
            // Like the default field format (`message key=value ...`), each value escaped.
            let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                let text = format!("{value:?}");
                match field.name() {
                    "message" => write!(w, "{}", escape_controls(&text)),
                    name => write!(w, "{name}={}", escape_controls(&text)),
                }
            })
            .delimited(" ");
            builder.fmt_fields(fields).init()
        }
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_controls("disk-1 ü \"q\""), "disk-1 ü \"q\"");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nb\tc\u{1b}[31md\r"), "a\\nb\\tc\\u{1b}[31md\\r");
    }
}
