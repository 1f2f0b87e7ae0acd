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
        Some(source) if cx.is_ok() => expand::expand(&item, &source),
        _ => {
            let errors = cx.into_compile_errors();
            quote!(#item #errors)
        }
    }
}
