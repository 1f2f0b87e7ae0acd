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

use std::cell::RefCell;

use proc_macro::TokenStream;

thread_local! {
    /// The path of the walflow crate for the expansion under way: what its
    /// `crate = "..."` names, or `None` for `::walflow`. Set by a macro's
    /// entry point for the length of its expansion ([`with_crate`]).
    static CRATE: RefCell<Option<syn::Path>> = const { RefCell::new(None) };
}

/// Expands with `path` as the walflow crate's path (as serde's
/// `#[serde(crate = "...")]` does), so a crate that re-exports walflow can
/// hand the macros its own path.
fn with_crate<R>(path: Option<syn::Path>, expand: impl FnOnce() -> R) -> R {
    let outer = CRATE.replace(path);
    let out = expand();
    CRATE.set(outer);
    out
}

/// Reads a `crate = "..."` value: a path such as `"my_crate::walflow"`.
fn crate_path(cx: &mut ctxt::Ctxt, value: &syn::LitStr) -> Option<syn::Path> {
    match value.parse::<syn::Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_spanned_by(
                value,
                format!(
                    "`crate` takes the path walflow is reached through, such as \
                     `crate = \"my_crate::walflow\"`; {:?} is not a path",
                    value.value()
                ),
            );
            None
        }
    }
}

/// The path generated code reaches walflow through.
fn private() -> proc_macro2::TokenStream {
    match CRATE.with_borrow(Clone::clone) {
        Some(path) => quote::quote!(#path::__private),
        None => quote::quote!(::walflow::__private),
    }
}

/// The same path, spanned at a user's token (so that errors in generated
/// code land on it).
fn private_at(span: proc_macro2::Span) -> proc_macro2::TokenStream {
    match CRATE.with_borrow(Clone::clone) {
        Some(path) => quote::quote_spanned!(span=> #path::__private),
        None => quote::quote_spanned!(span=> ::walflow::__private),
    }
}

/// Declares a struct as the Rust side of a table. See the `walflow` crate.
#[proc_macro_attribute]
pub fn event_source(args: TokenStream, input: TokenStream) -> TokenStream {
    event_source::expand(args.into(), input.into()).into()
}

/// Declares operators: what runs when entities change. See the `walflow`
/// crate for the keys.
///
/// # What a derived table's promise needs
///
/// A query operator's derived table equals what its query computes from
/// scratch when:
///
/// - the query is deterministic and reads only the operator's declared
///   entities (and its target): no `now()`, `random()`, nor other tables.
///   Coalescing and the covered-run rule run the query once for several
///   events of an id, or not at all for an event an earlier run already
///   saw; that is the same as a run per event only then, and a change of
///   an undeclared table queues nothing. At start walflow plans each query
///   and warns about every table it reads that is neither an entity nor the
///   target, and about calls such as `now()` or `random()` in its text;
/// - the entities' replica identity is `FULL` (the default of
///   `#[event_source]`), so updates and deletes carry the old row;
/// - one flow at a time runs on the slot;
/// - the rows that existed before the first start are filled in: walflow
///   does not do that today (only changes committed after the slot was
///   created reach the operators).
///
/// A handler declares the tables it writes with `writes: [..]`, so that
/// `Walflow::wait_processed` waits through the operators listening to
/// them.
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
