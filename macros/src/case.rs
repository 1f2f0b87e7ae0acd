//! serde's `rename_all` rules, applied to field names.

/// The rules `#[serde(rename_all = "...")]` accepts.
pub const RULES: &[&str] = &[
    "lowercase",
    "UPPERCASE",
    "PascalCase",
    "camelCase",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "SCREAMING-KEBAB-CASE",
];

/// Applies a `rename_all` rule to a (snake_case) field name, as serde does.
/// `None` for an unknown rule.
pub fn apply(rule: &str, field: &str) -> Option<String> {
    Some(match rule {
        "lowercase" | "snake_case" => field.to_owned(),
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_ascii_uppercase(),
        "PascalCase" => pascal(field),
        "camelCase" => {
            let p = pascal(field);
            let mut chars = p.chars();
            match chars.next() {
                Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                None => p,
            }
        }
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_ascii_uppercase().replace('_', "-"),
        _ => return None,
    })
}

fn pascal(field: &str) -> String {
    let mut out = String::new();
    let mut capitalize = true;
    for c in field.chars() {
        if c == '_' {
            capitalize = true;
        } else if capitalize {
            out.push(c.to_ascii_uppercase());
            capitalize = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::apply;

    #[test]
    fn renames_like_serde() {
        assert_eq!(apply("camelCase", "post_id").unwrap(), "postId");
        assert_eq!(apply("PascalCase", "post_id").unwrap(), "PostId");
        assert_eq!(apply("SCREAMING_SNAKE_CASE", "post_id").unwrap(), "POST_ID");
        assert_eq!(apply("kebab-case", "post_id").unwrap(), "post-id");
        assert_eq!(apply("SCREAMING-KEBAB-CASE", "post_id").unwrap(), "POST-ID");
        assert_eq!(apply("lowercase", "post_id").unwrap(), "post_id");
        assert!(apply("Title Case", "post_id").is_none());
    }
}
