//! Finding the `$n` parameters of a query, outside string literals, quoted
//! identifiers, comments and dollar-quoted strings.

/// The numbers of the `$n` parameters the SQL uses, in order of appearance.
pub fn parameters(sql: &str) -> Vec<u64> {
    let s = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    while i < s.len() {
        let prev_is_ident = i > 0 && ident(s[i - 1]);
        match s[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(s[i - 1], b'e' | b'E') && !(i > 1 && ident(s[i - 2]));
                i += 1;
                while i < s.len() {
                    if escapes && s[i] == b'\\' {
                        i += 2;
                    } else if s[i] == b'\'' {
                        if s.get(i + 1) == Some(&b'\'') {
                            i += 2;
                        } else {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < s.len() {
                    if s[i] == b'"' {
                        if s.get(i + 1) == Some(&b'"') {
                            i += 2;
                        } else {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < s.len() {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if !prev_is_ident => {
                let start = i;
                i += 1;
                if i < s.len() && s[i].is_ascii_digit() {
                    let digits = i;
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    let n = sql[digits..i].parse().unwrap_or(u64::MAX);
                    out.push(n);
                    continue;
                }
                // A dollar quote: `$$` or `$tag$`, tag not starting with a digit.
                let mut j = i;
                while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] >= 0x80)
                {
                    j += 1;
                }
                if j < s.len() && s[j] == b'$' {
                    let tag = &sql[start..=j];
                    i = match sql[j + 1..].find(tag) {
                        Some(end) => j + 1 + end + tag.len(),
                        None => s.len(),
                    };
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parameters;

    #[test]
    fn finds_parameters_in_code_only() {
        assert_eq!(parameters("select * from t where id = $1"), [1]);
        assert_eq!(parameters("select $1, $2, $10"), [1, 2, 10]);
        assert_eq!(parameters("select '$2', $1"), [1]);
        assert_eq!(parameters("select 'it''s $2', $1"), [1]);
        assert_eq!(parameters(r"select E'\' $2', $1"), [1]);
        assert_eq!(parameters(r#"select "a$2""" from t where x = $1"#), [1]);
        assert_eq!(parameters("select 1 -- $2\n, $1"), [1]);
        assert_eq!(parameters("select /* $2 /* $3 */ $4 */ $1"), [1]);
        assert_eq!(parameters("select $$ $2 $$, $tag$ $3 $tag$, $1"), [1]);
        assert_eq!(parameters("select a$2 from t"), Vec::<u64>::new());
        assert_eq!(parameters("select 'unterminated $1"), Vec::<u64>::new());
    }
}
