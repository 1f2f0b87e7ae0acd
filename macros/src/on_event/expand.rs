//! The code `on_event!` generates for one operator: a unit struct carrying
//! its name and docs, compile-time checks at the user's tokens, and the
//! registration submitted to `inventory`.
//!
//! Every use of an entity type is spanned at the user's token and goes
//! through `<Entity as EventSource>::...`, so a type that is not an event
//! source gives one error (identical ones are merged) under the type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::Path;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use super::ast::{Events, Operator};
use super::valid::key;
use crate::symbol::*;
use crate::{private, private_at};

/// `emit_struct` is false for an operator whose name an earlier operator of
/// the invocation took. `register` is false when the invocation has
/// mistakes: then only the struct and the type checks are emitted, so every
/// mistake shows up once.
pub fn operator(op: &Operator, emit_struct: bool, register: bool) -> TokenStream {
    let name = &op.name;
    let vis = &op.vis;
    let name_str = name.unraw().to_string();
    let docs = op.attrs.iter().filter(|a| a.path().is_ident(DOC));
    let item = if emit_struct {
        quote! {
            #(#docs)*
            #vis struct #name;

            impl #name {
                /// The name this operator is registered under.
                #vis const NAME: &'static str = #name_str;
            }

            // The operator runs without the application naming it.
            const _: (#name, &str) = (#name, #name::NAME);
        }
    } else {
        TokenStream::new()
    };
    let checks = checks(op);
    let handler = handler_fn(op);
    let registration = if register {
        registration(op)
    } else {
        TokenStream::new()
    };
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #checks
            #handler
            #registration
        };
    }
}

/// `<Entity as EventSource>::ITEM`, spanned at the entity.
fn source_item(entity: &Path, item: &str) -> TokenStream {
    let p = private_at(entity.span());
    let item = proc_macro2::Ident::new(item, entity.span());
    quote_spanned!(entity.span()=> <#entity as #p::EventSource>::#item)
}

/// `TableRef { schema, table }` of an entity, spanned at it.
fn table_ref(entity: &Path) -> TokenStream {
    let p = private_at(entity.span());
    let schema = source_item(entity, "SCHEMA");
    let table = source_item(entity, "TABLE");
    quote_spanned! {entity.span()=>
        #p::TableRef { schema: #schema, table: #table }
    }
}

fn entities(op: &Operator) -> &[Path] {
    op.entities.as_ref().map_or(&[], |e| &e.value)
}

fn writes(op: &Operator) -> &[Path] {
    op.writes.as_ref().map_or(&[], |w| &w.value)
}

fn checks(op: &Operator) -> TokenStream {
    let mut body = TokenStream::new();
    let entities = entities(op);
    let id_entries = op.id.as_ref().map_or(&[][..], |i| &i.value[..]);

    for ty in entities.iter().chain(&op.target).chain(writes(op)) {
        let table = source_item(ty, "TABLE");
        body.extend(quote! { let _ = #table; });
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
        let target_id = source_item(target, "Id");
        let target_param = quote_spanned!(target.span()=> __target: &#target_id);
        for entity in entities {
            let explicit = id_entries.iter().find(|e| key(&e.entity) == key(entity));
            body.extend(match explicit {
                Some(entry) => {
                    let entity = &entry.entity;
                    let field = &entry.field;
                    let pf = private_at(field.span());
                    let call = quote_spanned! {field.span()=>
                        #pf::same_type(__target, &__entity.#field)
                    };
                    quote! {
                        {
                            fn __walflow_id(#target_param, __entity: &#entity) {
                                #call;
                            }
                        }
                    }
                }
                None => {
                    let entity_id = source_item(entity, "Id");
                    let entity_param = quote_spanned!(entity.span()=> __entity: &#entity_id);
                    let pe = private_at(entity.span());
                    let call = quote_spanned! {entity.span()=>
                        #pe::same_type(__target, __entity)
                    };
                    quote! {
                        {
                            fn __walflow_id(#target_param, #entity_param) {
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
            let pf = private_at(field.span());
            let call = quote_spanned! {field.span()=>
                #pf::same_type(&__first.#first_field, &__entity.#field)
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

    quote! {
        #[allow(dead_code, unused_variables, clippy::all)]
        fn __walflow_check() {
            #body
        }
    }
}

/// The `fn` pointer a handler operator registers: decodes the raw event into
/// what the handler takes (which must carry every entity's events) and calls
/// it. Its type errors land on the handler's name.
fn handler_fn(op: &Operator) -> TokenStream {
    let Some(handler) = &op.handler else {
        return TokenStream::new();
    };
    let p = private();
    let handler = &handler.value;
    let span = handler.span();
    let ph = private_at(span);
    let call = quote_spanned! {span=>
        #ph::call_handler(#handler, __raw, __ctx)
    };
    let carries = entities(op).iter().map(|entity| {
        quote_spanned! {span=>
            #ph::assert_carries::<#entity, _>(__input);
        }
    });
    quote! {
        #[allow(dead_code)]
        fn __walflow_handler(
            __raw: &#p::RawEvent,
            __ctx: #p::Ctx,
        ) -> #p::BoxFuture<'static, ::core::result::Result<(), #p::HandlerError>> {
            let (__future, __input) = #call;
            #(#carries)*
            __future
        }
    }
}

fn registration(op: &Operator) -> TokenStream {
    let p = private();
    let name_str = op.name.unraw().to_string();
    let entities = entities(op);
    let id_entries = op.id.as_ref().map_or(&[][..], |i| &i.value[..]);
    let line = quote_spanned!(op.name.span()=> ::core::line!());

    let target = match &op.target {
        Some(target) => {
            let rust_name = source_item(target, "RUST_NAME");
            let table = table_ref(target);
            let id_column = source_item(target, "ID_COLUMN");
            quote! {
                ::core::option::Option::Some(#p::TargetRef {
                    rust_name: #rust_name,
                    table: #table,
                    id_column: #id_column,
                })
            }
        }
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
    let tables = entities.iter().map(table_ref);
    let id_mapping = entities.iter().map(|entity| {
        let column = match id_entries.iter().find(|e| key(&e.entity) == key(entity)) {
            Some(entry) => {
                let field = entry.field.unraw().to_string();
                let fields = source_item(entity, "FIELDS");
                quote!(#p::column_of(#fields, #field))
            }
            None => source_item(entity, "ID_COLUMN"),
        };
        let table = table_ref(entity);
        quote! {
            #p::IdMapping {
                table: #table,
                column: #column,
            }
        }
    });
    let delete_with = op.delete_with.iter().flat_map(|d| &d.value).map(table_ref);
    let writes = writes(op).iter().map(table_ref);
    let coalesce = op.coalesce.as_ref().is_some_and(|c| c.value.value);
    let action = match (&op.query, &op.handler) {
        (Some(query), _) => {
            let sql = &query.value;
            quote!(#p::OperatorAction::Query(#sql))
        }
        (None, Some(_)) => {
            quote!(#p::OperatorAction::Handler(__walflow_handler as #p::HandlerFn))
        }
        (None, None) => return TokenStream::new(),
    };

    quote! {
        const __WALFLOW_OPERATOR: #p::OperatorRegistration = #p::OperatorRegistration {
                name: #name_str,
                location: #p::Location {
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: #line,
                },
                target: #target,
                events: &[#(#kinds),*],
                entities: &[#(#tables),*],
                id_mapping: &[#(#id_mapping),*],
                delete_with: &[#(#delete_with),*],
                writes: &[#(#writes),*],
                coalesce: #coalesce,
                action: #action,
        };

        #p::inventory::submit! { __WALFLOW_OPERATOR }
    }
}
