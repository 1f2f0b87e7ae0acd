//! A snapshot of one expansion, so a change to the generated code shows as a
//! diff. Update with `UPDATE_EXPECT=1 cargo test -p walflow-macros`.

use expect_test::expect_file;
use quote::quote;

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    prettyplease::unparse(&syn::parse2(tokens).expect("the expansion parses as a file"))
}

#[test]
fn expansion_of_a_query_and_a_handler_operator() {
    let input = quote! {
        /// Keeps post_with_comments_counts in step with posts and comments.
        pub operator PostWithCommentsCountOperator for PostWithCommentsCount {
            events: all,
            entities: [Comment, Post],
            id: [Comment.post_id, Post.id],
            delete_with: [Post],
            coalesce: true,
            query: "SELECT $1",
        }

        operator Audit {
            events: [insert, delete],
            entities: [Comment, Post],
            writes: [AuditLog],
            handler: audit,
        }
    };
    expect_file!["expansion.expanded.rs"].assert_eq(&pretty(super::expand(input)));
}

#[test]
fn mistakes_emit_no_registration() {
    let input = quote! {
        operator Counter for Count {
            events: [insret],
            entities: [Post],
            query: "SELECT $1",
        }
    };
    let out = super::expand(input).to_string();
    assert!(out.contains("compile_error"));
    assert!(out.contains("struct Counter"));
    assert!(!out.contains("inventory"));
}
