//! The code `on_event!` generates for one operator: a unit struct carrying
//! its name and docs, compile-time checks at the user's tokens, and the
//! registration submitted to `inventory`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use super::ast::{Events, Operator};
use super::valid::key;
use crate::private;
use crate::symbol::*;

/// `register` is false when the invocation has mistakes: then only the
/// struct and the type checks are emitted, so every mistake shows up once.
pub fn operator(op: &Operator, register: bool) -> TokenStream {
    let name = &op.name;
    let vis = &op.vis;
    let name_str = name.unraw().to_string();
    let docs = op.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let checks = checks(op);
    let registration = if register {
        registration(op)
    } else {
        TokenStream::new()
    };
    quote! {
        #(#docs)*
        #vis struct #name;

        impl #name {
            /// The name this operator is registered under.
            #vis const NAME: &'static str = #name_str;
        }

        #[doc(hidden)]
        const _: () = {
            #checks
            #registration
        };
    }
}

fn checks(op: &Operator) -> TokenStream {
    let p = private();
    let mut body = TokenStream::new();
    let entities: &[syn::Path] = op.entities.as_ref().map_or(&[], |e| &e.value);
    let id_entries = op.id.as_ref().map_or(&[][..], |i| &i.value[..]);

    for entity in entities {
        body.extend(quote_spanned! {entity.span()=>
            #p::assert_event_source::<#entity>();
        });
    }
    if let Some(target) = &op.target {
        body.extend(quote_spanned! {target.span()=>
            #p::assert_event_source::<#target>();
        });
    }
    for entry in id_entries {
        let entity = &entry.entity;
        let field = &entry.field;
        let access = quote_spanned!(field.span()=> &__entity.#field);
        body.extend(quote! {
            {
                fn __walflow_field(__entity: &#entity) {
                    let _ = #access;
                }
            }
        });
    }

    // The id types: every entity's mapped field against the target's id, or,
    // without a target, every explicit `id` entry against the first one.
    if let Some(target) = &op.target {
        for entity in entities {
            let explicit = id_entries.iter().find(|e| key(&e.entity) == key(entity));
            body.extend(match explicit {
                Some(entry) => {
                    let entity = &entry.entity;
                    let field = &entry.field;
                    let call = quote_spanned! {field.span()=>
                        #p::same_type(__target, &__entity.#field)
                    };
                    quote! {
                        {
                            fn __walflow_id(
                                __target: &<#target as #p::EventSource>::Id,
                                __entity: &#entity,
                            ) {
                                #call;
                            }
                        }
                    }
                }
                None => {
                    let call = quote_spanned! {entity.span()=>
                        #p::same_type(__target, __entity)
                    };
                    quote! {
                        {
                            fn __walflow_id(
                                __target: &<#target as #p::EventSource>::Id,
                                __entity: &<#entity as #p::EventSource>::Id,
                            ) {
                                #call;
                            }
                        }
                    }
                }
            });
        }
    } else if let Some((first, rest)) = id_entries.split_first() {
        let (first_entity, first_field) = (&first.entity, &first.field);
        for entry in rest {
            let entity = &entry.entity;
            let field = &entry.field;
            let call = quote_spanned! {field.span()=>
                #p::same_type(&__first.#first_field, &__entity.#field)
            };
            body.extend(quote! {
                {
                    fn __walflow_id(__first: &#first_entity, __entity: &#entity) {
                        #call;
                    }
                }
            });
        }
    }

    if let Some(handler) = &op.handler {
        let handler = &handler.value;
        body.extend(quote_spanned! {handler.span()=>
            let __input = #p::handler_input(&#handler);
        });
        for entity in entities {
            body.extend(quote_spanned! {handler.span()=>
                #p::assert_carries::<#entity, _>(__input);
            });
        }
    }

    quote! {
        #[allow(dead_code, unused_variables, clippy::all)]
        fn __walflow_check() {
            #body
        }
    }
}

fn registration(op: &Operator) -> TokenStream {
    let p = private();
    let name_str = op.name.unraw().to_string();
    let entities: &[syn::Path] = op.entities.as_ref().map_or(&[], |e| &e.value);
    let id_entries = op.id.as_ref().map_or(&[][..], |i| &i.value[..]);
    let line = quote_spanned!(op.name.span()=> ::core::line!());

    let target = match &op.target {
        Some(target) => quote!(::core::option::Option::Some(#p::TargetRef::of::<#target>())),
        None => quote!(::core::option::Option::None),
    };
    let kinds: Vec<&str> = match op.events.as_ref().map(|e| &e.value) {
        Some(Events::List(_, kinds)) => EVENT_KINDS
            .iter()
            .copied()
            .filter(|k| kinds.iter().any(|i| i == k))
            .collect(),
        _ => vec![INSERT, UPDATE, DELETE],
    };
    let kinds = kinds.iter().map(|k| match *k {
        INSERT => quote!(#p::EventKind::Insert),
        UPDATE => quote!(#p::EventKind::Update),
        DELETE => quote!(#p::EventKind::Delete),
        _ => quote!(#p::EventKind::Truncate),
    });
    let id_mapping = entities.iter().map(|entity| {
        let column = match id_entries.iter().find(|e| key(&e.entity) == key(entity)) {
            Some(entry) => {
                let field = entry.field.unraw().to_string();
                quote!(#p::column_of(<#entity as #p::EventSource>::FIELDS, #field))
            }
            None => quote!(<#entity as #p::EventSource>::ID_COLUMN),
        };
        quote! {
            #p::IdMapping {
                table: #p::TableRef::of::<#entity>(),
                column: #column,
            }
        }
    });
    let delete_with = op.delete_with.iter().flat_map(|d| &d.value);
    let coalesce = op.coalesce.as_ref().is_some_and(|c| c.value.value);

    let (handler_fn, action) = match (&op.query, &op.handler) {
        (Some(query), _) => {
            let sql = &query.value;
            (TokenStream::new(), quote!(#p::OperatorAction::Query(#sql)))
        }
        (None, Some(handler)) => {
            let handler = &handler.value;
            let call = quote_spanned! {handler.span()=>
                #p::call_handler(#handler, __raw, __ctx)
            };
            (
                quote! {
                    fn __walflow_handler(
                        __raw: &#p::RawEvent,
                        __ctx: #p::Ctx,
                    ) -> #p::BoxFuture<'static, ::core::result::Result<(), #p::HandlerError>> {
                        #call
                    }
                },
                quote!(#p::OperatorAction::Handler(__walflow_handler as #p::HandlerFn)),
            )
        }
        (None, None) => return TokenStream::new(),
    };

    quote! {
        #handler_fn

        #p::inventory::submit! {
            #p::OperatorRegistration {
                name: #name_str,
                location: #p::Location {
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: #line,
                },
                target: #target,
                events: &[#(#kinds),*],
                entities: &[#(#p::TableRef::of::<#entities>()),*],
                id_mapping: &[#(#id_mapping),*],
                delete_with: &[#(#p::TableRef::of::<#delete_with>()),*],
                coalesce: #coalesce,
                action: #action,
            }
        }
    }
}
