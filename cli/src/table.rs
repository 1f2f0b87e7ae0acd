//! Plain text tables: a header and rows, columns padded to their widest
//! cell.

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

    /// Adds a row.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    /// The table, each line starting with `indent`; the last column is not
    /// padded.
    pub fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            out.push_str(indent);
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    let pad = widths[c] - cell.chars().count() + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["A", "LONG HEADER", "C"]);
        t.row(["wide cell".into(), "x".into(), "last".into()]);
        assert_eq!(
            t.render("  "),
            "  A          LONG HEADER  C\n  wide cell  x            last\n"
        );
    }
}
