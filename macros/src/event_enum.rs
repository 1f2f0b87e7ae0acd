//! `#[event_enum]`: an enum with one `Variant(Event<T>)` per entity becomes
//! something a handler of several entities can take.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, PathArguments, Type};

use crate::ctxt::Ctxt;
use crate::symbol::{CRATE, EVENT};
use crate::{private, private_at};

struct Variant<'a> {
    ident: &'a Ident,
    entity: &'a Type,
}

pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let item: DeriveInput = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                "`#[event_enum]` goes on an enum such as `enum BlogEvent { Post(Event<Post>) }`",
            )
            .into_compile_error();
            return quote!(#input #e);
        }
    };
    let krate = parse_args(&mut cx, args);
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &item.generics,
            "an event enum cannot be generic; remove the generic parameters",
        );
    }
    let mut variants = Vec::new();
    match &item.data {
        Data::Enum(data) => {
            if data.variants.is_empty() {
                cx.error_spanned_by(
                    &item.ident,
                    "an event enum needs one variant per entity, such as `Post(Event<Post>)`",
                );
            }
            for v in &data.variants {
                match entity_of(&v.fields) {
                    Some(entity) => {
                        let k = entity.to_token_stream().to_string();
                        if variants.iter().any(|o: &Variant<'_>| o.entity.to_token_stream().to_string() == k) {
                            cx.error_spanned_by(
                                entity,
                                format!("`{}` has two variants; keep one", k.replace(' ', "")),
                            );
                        }
                        variants.push(Variant {
                            ident: &v.ident,
                            entity,
                        });
                    }
                    None => cx.error_spanned_by(
                        v,
                        format!(
                            "each variant holds one `Event` of an `#[event_source]` type; write `{}(Event<{}>)`",
                            v.ident, v.ident
                        ),
                    ),
                }
            }
        }
        Data::Struct(s) => cx.error_spanned_by(
            s.struct_token,
            "`#[event_enum]` goes on an enum with one `Variant(Event<T>)` per entity, not on a struct",
        ),
        Data::Union(u) => cx.error_spanned_by(
            u.union_token,
            "`#[event_enum]` goes on an enum with one `Variant(Event<T>)` per entity, not on a union",
        ),
    }
    if !cx.is_ok() {
        let errors = cx.into_compile_errors();
        return quote!(#item #errors);
    }
    crate::with_crate(krate, || generate(&item, &variants))
}

/// The arguments: only `crate = "..."`, the path walflow is reached through.
fn parse_args(cx: &mut Ctxt, args: TokenStream) -> Option<syn::Path> {
    if args.is_empty() {
        return None;
    }
    let mut krate = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident(CRATE) {
            let value: syn::LitStr = meta.value()?.parse()?;
            krate = crate::crate_path(cx, &value);
            Ok(())
        } else {
            Err(meta.error("`#[event_enum]` takes no arguments but `crate = \"...\"`; remove them"))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.syn_error(e);
    }
    krate
}

/// `T` in a variant `(Event<T>)`.
fn entity_of(fields: &Fields) -> Option<&Type> {
    let Fields::Unnamed(fields) = fields else {
        return None;
    };
    if fields.unnamed.len() != 1 {
        return None;
    }
    let Type::Path(ty) = &fields.unnamed[0].ty else {
        return None;
    };
    let last = ty.path.segments.last()?;
    if last.ident != EVENT {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first() {
        Some(GenericArgument::Type(t)) if args.args.len() == 1 => Some(t),
        _ => None,
    }
}

fn generate(item: &DeriveInput, variants: &[Variant<'_>]) -> TokenStream {
    let p = private();
    let ident = &item.ident;
    let impls = variants.iter().map(|Variant { ident: v, entity }| {
        quote! {
            #[automatically_derived]
            impl ::core::convert::From<#p::Event<#entity>> for #ident {
                fn from(event: #p::Event<#entity>) -> Self {
                    #ident::#v(event)
                }
            }
            #[automatically_derived]
            impl #p::Carries<#entity> for #ident {}
        }
    });
    let decode = variants.iter().map(|Variant { ident: v, entity }| {
        let pe = private_at(entity.span());
        let is_table = quote_spanned!(entity.span()=> <#entity as #pe::EventSource>::is_table);
        quote! {
            if #is_table(raw) {
                return #p::Event::<#entity>::from_raw(raw).map(#ident::#v);
            }
        }
    });
    let arms_kind = variants
        .iter()
        .map(|Variant { ident: v, .. }| quote!(#ident::#v(event) => event.kind()));
    let arms_meta = variants
        .iter()
        .map(|Variant { ident: v, .. }| quote!(#ident::#v(event) => event.meta()));
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #(#impls)*

            #[automatically_derived]
            impl #p::FromRawEvent for #ident {
                fn from_raw_event(
                    raw: &#p::RawEvent,
                ) -> ::core::result::Result<Self, #p::EventDecodeError> {
                    #(#decode)*
                    ::core::result::Result::Err(#p::EventDecodeError::UnexpectedTable {
                        rust_type: ::core::any::type_name::<Self>(),
                        schema: ::std::string::ToString::to_string(&*raw.schema),
                        table: ::std::string::ToString::to_string(&*raw.table),
                    })
                }
            }

            #[automatically_derived]
            impl #p::EventEnum for #ident {
                fn kind(&self) -> #p::EventKind {
                    match self {
                        #(#arms_kind,)*
                    }
                }

                fn meta(&self) -> &#p::EventMeta {
                    match self {
                        #(#arms_meta,)*
                    }
                }
            }
        };
    }
}
