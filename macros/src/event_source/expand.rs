//! The code `#[event_source]` generates.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::DeriveInput;
use syn::ext::IdentExt;

use super::attr::Source;
use crate::{private, private_at};

pub fn expand(item: &DeriveInput, source: &Source) -> TokenStream {
    let p = private();
    let ident = &item.ident;
    let rust_name = ident.unraw().to_string();
    let Source {
        schema,
        table,
        replica_identity_full,
        ..
    } = source;
    let id = &source.fields[source.id];
    let id_ident = &id.ident;
    let id_ty = &id.ty;
    let id_column = &id.column;
    let columns = source.fields.iter().map(|f| &f.column);
    let field_names = source.fields.iter().map(|f| f.ident.unraw().to_string());
    let field_columns = source.fields.iter().map(|f| &f.column);
    let descriptors = source.fields.iter().map(|f| {
        let vis = &f.vis;
        let ty = &f.ty;
        let column = &f.column;
        let name = format_ident!("{}", f.ident.unraw().to_string().to_uppercase());
        let doc = format!(" Column `{column}` of `{schema}.{table}`.");
        quote! {
            #[doc = #doc]
            #vis const #name: #p::Field<#ident, #ty> = #p::Field::new(#column);
        }
    });

    let pi = private_at(ident.span());
    let assert_deserialize = quote_spanned! {ident.span()=>
        #[allow(dead_code)]
        fn __walflow_check() {
            #pi::assert_deserialize::<#ident>();
        }
    };
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #p::EventSource for #ident {
                const RUST_NAME: &'static str = #rust_name;
                const SCHEMA: &'static str = #schema;
                const TABLE: &'static str = #table;
                const ID_COLUMN: &'static str = #id_column;
                const COLUMNS: &'static [&'static str] = &[#(#columns),*];
                const FIELDS: &'static [(&'static str, &'static str)] =
                    &[#((#field_names, #field_columns)),*];
                const REPLICA_IDENTITY_FULL: bool = #replica_identity_full;
                type Id = #id_ty;

                fn id(&self) -> &Self::Id {
                    &self.#id_ident
                }
            }

            #assert_deserialize

            const __WALFLOW_ENTITY: #p::EntityRegistration =
                #p::EntityRegistration::of::<#ident>(#p::Location {
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                });

            #p::inventory::submit! { __WALFLOW_ENTITY }
        };

        #[allow(dead_code)]
        impl #ident {
            #(#descriptors)*
        }
    }
}
