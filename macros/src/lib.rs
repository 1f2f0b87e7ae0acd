//! Declaration macros of walflow. Use them through the `walflow` crate,
//! which documents the language.
//!
//! Each macro reads what was written (`ast`/`attr`), checks what it can on
//! its own (`valid`), then generates code (`expand`) whose type checks the
//! compiler runs at the user's tokens. Mistakes are collected and reported
//! together; the user's item is emitted even when the declaration is wrong,
//! so one mistake does not cascade.

mod case;
mod ctxt;
mod event_enum;
mod event_source;
mod on_event;
mod sql;
mod symbol;

use proc_macro::TokenStream;

/// The path generated code reaches walflow through.
fn private() -> proc_macro2::TokenStream {
    quote::quote!(::walflow::__private)
}

/// The same path, spanned at a user's token (so that errors in generated
/// code land on it).
fn private_at(span: proc_macro2::Span) -> proc_macro2::TokenStream {
    quote::quote_spanned!(span=> ::walflow::__private)
}

/// Declares a struct as the Rust side of a table. See the `walflow` crate.
#[proc_macro_attribute]
pub fn event_source(args: TokenStream, input: TokenStream) -> TokenStream {
    event_source::expand(args.into(), input.into()).into()
}

/// Declares operators: what runs when entities change. See the `walflow`
/// crate.
#[proc_macro]
pub fn on_event(input: TokenStream) -> TokenStream {
    on_event::expand(input.into()).into()
}

/// Turns an enum of `Event<T>` variants into an event type a handler of
/// several entities can take. See the `walflow` crate.
#[proc_macro_attribute]
pub fn event_enum(args: TokenStream, input: TokenStream) -> TokenStream {
    event_enum::expand(args.into(), input.into()).into()
}
