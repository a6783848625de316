//! Diagnostics that point a person at the exact place in a policy file.
//!
//! Every validation problem becomes a [`Diagnostic`] carrying the file name,
//! a 1-based line and column, and a message that says what would be valid.
//! Byte offsets from the TOML parser are turned into line/column here so the
//! rest of the crate can work with spans only.

use std::fmt;
use std::ops::Range;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The policy is refused.
    Error,
    /// The policy is accepted, but something in it is probably a mistake.
    Warning,
}

/// One finding about a policy file, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given by the caller (for example `policy.toml`).
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {}{}",
            self.file, self.line, self.column, prefix, self.message
        )
    }
}

/// Maps byte offsets of one source text to line and column numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceMap<'a> {
    file: &'a str,
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Self { file, text }
    }

    /// Returns the 1-based line and column of a byte offset; offsets past the
    /// end or inside a multi-byte character are clamped rather than panicking.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Builds an error located at the start of `span`.
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(span, Severity::Error, message.into())
    }

    /// Builds a warning located at the start of `span`.
    pub(crate) fn warning(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(span, Severity::Warning, message.into())
    }

    /// The 1-based line of a byte offset, for messages that refer to other places.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_column(offset).0
    }

    fn diagnostic(&self, span: Range<usize>, severity: Severity, message: String) -> Diagnostic {
        let (line, column) = self.line_column(span.start);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            severity,
            message,
        }
    }
}

/// Joins diagnostics one per line, the way a compiler prints them.
pub(crate) fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let map = SourceMap::new("p.toml", "a = 1\nbb = 2\n");
        assert_eq!(map.line_column(0), (1, 1));
        assert_eq!(map.line_column(6), (2, 1));
        assert_eq!(map.line_column(8), (2, 3));
    }

    #[test]
    fn offsets_past_the_end_and_inside_characters_are_clamped() {
        let map = SourceMap::new("p.toml", "é\n");
        assert_eq!(map.line_column(1), (1, 1));
        assert_eq!(map.line_column(999), (2, 1));
    }

    #[test]
    fn warnings_are_marked_in_display() {
        let map = SourceMap::new("p.toml", "x\ny\n");
        assert_eq!(
            map.warning(2..3, "odd").to_string(),
            "p.toml:2:1: warning: odd"
        );
        assert_eq!(map.error(0..1, "bad").to_string(), "p.toml:1:1: bad");
    }
}
