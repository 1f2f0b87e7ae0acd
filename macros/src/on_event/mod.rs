//! `on_event!`: parse the operators, check them, expand.

mod ast;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;

pub fn expand(input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let (krate, operators) = ast::parse(&mut cx, input);
    let krate = krate.and_then(|lit| crate::crate_path(&mut cx, &lit));
    for (i, op) in operators.iter().enumerate() {
        valid::check(&mut cx, op);
        if operators[..i].iter().any(|other| other.name == op.name) {
            cx.error_spanned_by(
                &op.name,
                format!("two operators are named `{}`; rename one", op.name),
            );
        }
    }
    let register = cx.is_ok();
    let items: Vec<_> = crate::with_crate(krate, || {
        operators
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let first = !operators[..i].iter().any(|other| other.name == op.name);
                expand::operator(op, first, register)
            })
            .collect()
    });
    let errors = cx.into_compile_errors();
    quote! {
        #(#items)*
        #errors
    }
}

#[cfg(test)]
mod tests;
