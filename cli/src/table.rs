//! Plain text tables: a header and rows, columns padded to their widest
//! cell, the last column wrapped to the terminal's width.

use std::borrow::Cow;

use crate::escape;

/// The least room worth giving the last column beside the others; with
/// less, its cells go on lines of their own below their rows.
const MIN_LAST: usize = 24;

/// How far below its row a last cell that does not fit beside it starts.
const BELOW_INDENT: &str = "    ";

/// A table being built.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<const N: usize>(header: [&str; N]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row. Control characters in its cells (a newline too) are
    /// written as escapes: a cell is one line, and shows its text as it
    /// is, never what a terminal would make of it.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| match escape::one_line(&cell) {
                    Cow::Borrowed(_) => cell,
                    Cow::Owned(escaped) => escaped,
                })
                .collect(),
        );
    }

    /// The table, each line starting with `indent`; the last column is not
    /// padded, nor cut.
    pub fn render(&self, indent: &str) -> String {
        self.render_fitted(indent, None)
    }

    /// The table in `width` characters (`None`: however wide its cells
    /// are). Nothing is cut: the last column's cells are wrapped at spaces
    /// into the room the other columns leave, their further lines aligned
    /// under the column; when that room is under [`MIN_LAST`] characters,
    /// the header leaves the last column out and each row's last cell goes
    /// on the lines below the row, indented by four more spaces and wrapped
    /// to `width`. A word longer than the room is split.
    pub fn render_fitted(&self, indent: &str, width: Option<usize>) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| len(cell))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(last) = columns.checked_sub(1) else {
            return String::new();
        };
        // Where the last column starts.
        let start = len(indent) + widths[..last].iter().map(|w| w + 2).sum::<usize>();
        let layout = match width {
            Some(width) if start + widths[last] > width => {
                if width.saturating_sub(start) >= MIN_LAST {
                    Layout::Beside(width - start)
                } else {
                    let room = width.saturating_sub(len(indent) + BELOW_INDENT.len());
                    Layout::Below(room.max(MIN_LAST))
                }
            }
            _ => Layout::Beside(usize::MAX),
        };
        let mut out = String::new();
        for (r, row) in self.rows.iter().enumerate() {
            let below = matches!(layout, Layout::Below(_));
            let shown = if below {
                last.min(row.len())
            } else {
                row.len()
            };
            out.push_str(indent);
            for (c, cell) in row[..shown].iter().enumerate() {
                if c + 1 == shown {
                    if c == last {
                        let Layout::Beside(room) = layout else {
                            unreachable!("the last cell is beside its row")
                        };
                        let lines = wrap(cell, room);
                        out.push_str(&lines[0]);
                        for line in &lines[1..] {
                            out.push('\n');
                            out.extend(std::iter::repeat_n(' ', start));
                            out.push_str(line);
                        }
                    } else {
                        out.push_str(cell);
                    }
                } else {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', widths[c] - len(cell) + 2));
                }
            }
            out.push('\n');
            if let (Layout::Below(room), Some(cell), true) = (layout, row.get(last), r > 0) {
                for line in wrap(cell, room) {
                    out.push_str(indent);
                    out.push_str(BELOW_INDENT);
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Where the last column goes.
#[derive(Clone, Copy)]
enum Layout {
    /// Beside the others, in this many characters.
    Beside(usize),
    /// Below its row, in this many characters.
    Below(usize),
}

fn len(s: &str) -> usize {
    s.chars().count()
}

/// `text` in lines of at most `room` characters, broken at spaces (a word
/// longer than `room` is split); at least one line.
fn wrap(text: &str, room: usize) -> Vec<String> {
    let room = room.max(1);
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let current = lines.last_mut().expect("at least one line");
        let used = len(current);
        if used > 0 && used + 1 + len(word) <= room {
            current.push(' ');
            current.push_str(word);
            continue;
        }
        if used > 0 {
            lines.push(String::new());
        }
        let chars: Vec<char> = word.chars().collect();
        for (i, piece) in chars.chunks(room).enumerate() {
            if i > 0 {
                lines.push(String::new());
            }
            lines.last_mut().expect("at least one line").extend(piece);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::{Table, wrap};

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["A", "LONG HEADER", "C"]);
        t.row(["wide cell".into(), "x".into(), "last".into()]);
        assert_eq!(
            t.render("  "),
            "  A          LONG HEADER  C\n  wide cell  x            last\n"
        );
    }

    #[test]
    fn words_wrap_and_long_words_split() {
        assert_eq!(wrap("one two three", 7), ["one two", "three"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("a  b", 10), ["a  b"]);
    }

    #[test]
    fn the_last_column_wraps_beside_the_others_when_there_is_room() {
        let mut t = Table::new(["ID", "ERROR"]);
        t.row([
            "1".into(),
            "new row violates check constraint \"short_title\"".into(),
        ]);
        let text = t.render_fitted("", Some(30));
        assert_eq!(
            text,
            "ID  ERROR\n1   new row violates check\n    constraint \"short_title\"\n"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 30), "{text}");
        // Room enough: one line.
        assert_eq!(
            t.render_fitted("", Some(200)),
            t.render(""),
            "nothing changes when it fits"
        );
    }

    #[test]
    fn the_last_column_goes_below_when_the_others_leave_too_little_room() {
        let mut t = Table::new(["ID", "A RATHER WIDE COLUMN", "ERROR"]);
        t.row([
            "1".into(),
            "x".into(),
            "new row for relation \"titles\" violates check constraint \"short_title\"".into(),
        ]);
        let text = t.render_fitted("", Some(40));
        assert_eq!(
            text,
            "ID  A RATHER WIDE COLUMN\n\
             1   x\n    new row for relation \"titles\"\n    violates check constraint\n    \"short_title\"\n"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
    }
}
