//! `#[event_source]`: parse the attribute and the struct, check them, expand.

mod attr;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;

pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let item: syn::DeriveInput = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                "`#[event_source]` goes on a struct with named fields, one per column",
            )
            .into_compile_error();
            return quote!(#input #e);
        }
    };
    let source = attr::Source::from_syn(&mut cx, args, &item);
    match source {
        Some(source) if cx.is_ok() => {
            crate::with_crate(source.krate.clone(), || expand::expand(&item, &source))
        }
        _ => {
            let errors = cx.into_compile_errors();
            quote!(#item #errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect_file;
    use quote::quote;

    #[test]
    fn expansion() {
        let args = quote!(table = "comments", schema = "blog");
        let input = quote! {
            #[derive(Debug, serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            pub struct Comment {
                pub id: i64,
                pub post_id: i64,
                #[serde(rename = "text")]
                body: String,
            }
        };
        let out = super::expand(args, input);
        let pretty = prettyplease::unparse(&syn::parse2(out).expect("the expansion parses"));
        expect_file!["expansion.expanded.rs"].assert_eq(&pretty);
    }
}
