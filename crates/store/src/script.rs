//! The statements of a migration script, read with CQL's lexical rules.
//!
//! A script is split on `;` only where a `;` ends a statement: never inside a
//! string (`'...'` with `''` for a quote, or `$$...$$`), a quoted identifier
//! (`"..."` with `""`), or a comment (`--` or `//` to the end of the line,
//! `/* ... */`). Comments are dropped and every run of whitespace outside a
//! literal becomes one space, so a statement reads as one line in an error
//! message, and the checksum of a script ([`normalized`]) does not change
//! when only its comments or layout do.
//!
//! SQLite accepts the same quoting for what our scripts use, so its scripts
//! are normalized here too for their checksum, but are run by SQLite's own
//! parser (`execute_batch`), which also knows `CREATE TRIGGER ... END;`.

/// A script that cannot be split: a literal or comment that never ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unterminated {what} starting on line {line}")]
pub(crate) struct ScriptError {
    pub what: &'static str,
    pub line: usize,
}

/// The statements of `script`, in order, without their `;`.
pub(crate) fn statements(script: &str) -> Result<Vec<String>, ScriptError> {
    split(script, Spacing::Readable)
}

/// The script as its checksum sees it: its statements, one per line, with
/// a space only where one separates two words, so that neither comments nor
/// layout (`(\n    k int` or `(k int`) change it.
pub(crate) fn normalized(script: &str) -> Result<String, ScriptError> {
    Ok(split(script, Spacing::Tight)?.join(";\n"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Spacing {
    /// One space wherever the script had whitespace or a comment.
    Readable,
    /// Only between two words (identifiers, keywords, numbers, literals).
    Tight,
}

fn split(script: &str, spacing: Spacing) -> Result<Vec<String>, ScriptError> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut line = 1;
    // Whitespace (or a comment) was seen since the last token: emit one
    // space before the next token, unless at the start of a statement.
    let mut pending_space = false;

    while let Some(c) = chars.next() {
        match c {
            ';' => {
                let statement = current.trim();
                if !statement.is_empty() {
                    statements.push(statement.to_owned());
                }
                current.clear();
                pending_space = false;
            }
            c if c.is_whitespace() => {
                if c == '\n' {
                    line += 1;
                }
                pending_space = true;
            }
            '-' if chars.peek() == Some(&'-') => {
                skip_line(&mut chars);
                line += 1;
                pending_space = true;
            }
            '/' if chars.peek() == Some(&'/') => {
                skip_line(&mut chars);
                line += 1;
                pending_space = true;
            }
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                chars.next();
                let mut previous = '\0';
                loop {
                    match chars.next() {
                        None => {
                            return Err(ScriptError {
                                what: "comment",
                                line: start,
                            });
                        }
                        Some('/') if previous == '*' => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            previous = c;
                        }
                    }
                }
                pending_space = true;
            }
            '\'' | '"' => {
                push_space(&mut current, &mut pending_space, spacing, c);
                let start = line;
                current.push(c);
                loop {
                    match chars.next() {
                        None => {
                            return Err(ScriptError {
                                what: if c == '\'' {
                                    "string"
                                } else {
                                    "quoted identifier"
                                },
                                line: start,
                            });
                        }
                        Some(q) if q == c => {
                            current.push(q);
                            // A doubled quote is an escaped one, not the end.
                            if chars.peek() == Some(&c) {
                                chars.next();
                                current.push(c);
                            } else {
                                break;
                            }
                        }
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            current.push(other);
                        }
                    }
                }
            }
            '$' if chars.peek() == Some(&'$') => {
                push_space(&mut current, &mut pending_space, spacing, c);
                let start = line;
                chars.next();
                current.push_str("$$");
                loop {
                    match chars.next() {
                        None => {
                            return Err(ScriptError {
                                what: "$$ string",
                                line: start,
                            });
                        }
                        Some('$') if chars.peek() == Some(&'$') => {
                            chars.next();
                            current.push_str("$$");
                            break;
                        }
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            current.push(other);
                        }
                    }
                }
            }
            c => {
                push_space(&mut current, &mut pending_space, spacing, c);
                current.push(c);
            }
        }
    }
    let statement = current.trim();
    if !statement.is_empty() {
        statements.push(statement.to_owned());
    }
    Ok(statements)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// Emits the space that whitespace or a comment before `next` stood for.
fn push_space(current: &mut String, pending_space: &mut bool, spacing: Spacing, next: char) {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '\'' | '"' | '$');
    if *pending_space
        && let Some(last) = current.chars().next_back()
        && (spacing == Spacing::Readable || (word(last) && word(next)))
    {
        current.push(' ');
    }
    *pending_space = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(script: &str) -> Vec<String> {
        statements(script).unwrap_or_else(|e| panic!("{script:?}: {e}"))
    }

    #[test]
    fn splits_on_semicolons_and_drops_comments() {
        let script = "-- header; with a semicolon\nCREATE TABLE a (x int PRIMARY KEY);\n\n// b;\nCREATE TABLE b (y int PRIMARY KEY); -- tail;\n/* block; */";
        assert_eq!(
            split(script),
            vec![
                "CREATE TABLE a (x int PRIMARY KEY)",
                "CREATE TABLE b (y int PRIMARY KEY)"
            ]
        );
    }

    #[test]
    fn a_semicolon_in_a_string_does_not_end_the_statement() {
        assert_eq!(
            split("INSERT INTO t (k, v) VALUES ('a;b', 'it''s; -- not a comment');SELECT 1"),
            vec![
                "INSERT INTO t (k, v) VALUES ('a;b', 'it''s; -- not a comment')",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn quoted_identifiers_and_dollar_strings_are_kept_whole() {
        assert_eq!(
            split(
                "CREATE TABLE \"odd;\"\"name\" (k int PRIMARY KEY) WITH comment = $$a; /* b */ 'c$$;"
            ),
            vec![
                "CREATE TABLE \"odd;\"\"name\" (k int PRIMARY KEY) WITH comment = $$a; /* b */ 'c$$"
            ]
        );
    }

    #[test]
    fn comments_inside_statements_become_spaces() {
        assert_eq!(
            split(
                "CREATE TABLE t (\n  k int, -- the key; really\n  v text /* ; */,\n  PRIMARY KEY (k)\n)"
            ),
            vec!["CREATE TABLE t ( k int, v text , PRIMARY KEY (k) )"]
        );
        // A comment between two tokens must not glue them together.
        assert_eq!(split("SELECT/**/x FROM t"), vec!["SELECT x FROM t"]);
    }

    #[test]
    fn a_multi_line_string_keeps_its_layout() {
        assert_eq!(
            split("INSERT INTO t (v) VALUES ('line 1\n  line 2');"),
            vec!["INSERT INTO t (v) VALUES ('line 1\n  line 2')"]
        );
    }

    #[test]
    fn unterminated_literals_and_comments_are_errors_naming_the_line() {
        for (script, what, line) in [
            ("SELECT 1;\nSELECT 'abc;", "string", 2),
            ("SELECT \"x;", "quoted identifier", 1),
            ("\n\nSELECT $$x;", "$$ string", 3),
            ("SELECT 1; /* never\nends;", "comment", 1),
        ] {
            assert_eq!(
                statements(script),
                Err(ScriptError { what, line }),
                "{script:?}"
            );
        }
    }

    #[test]
    fn empty_statements_are_skipped() {
        assert_eq!(split(";;  ;\n-- only a comment\n;"), Vec::<String>::new());
        assert_eq!(split("SELECT 1"), vec!["SELECT 1"]);
    }

    #[test]
    fn layout_and_comments_do_not_change_the_normal_form() {
        let a = "CREATE TABLE t (k int PRIMARY KEY);\nCREATE TABLE u (k int PRIMARY KEY);";
        let b = "-- two tables\nCREATE TABLE t (\n    k int PRIMARY KEY -- key\n);\n\nCREATE   TABLE u ( k int PRIMARY KEY )";
        assert_eq!(normalized(a), normalized(b));
        assert_ne!(
            normalized(a),
            normalized("CREATE TABLE t (k text PRIMARY KEY); CREATE TABLE u (k int PRIMARY KEY)")
        );
    }
}
