//! What was written: the attribute's keys, the struct's fields and their
//! `serde` renames, checked.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type, Visibility};

use crate::case;
use crate::ctxt::Ctxt;
use crate::symbol::*;

/// A checked `#[event_source]` declaration.
pub struct Source {
    pub schema: String,
    pub table: String,
    pub replica_identity_full: bool,
    /// The path walflow is reached through, when not `::walflow`.
    pub krate: Option<syn::Path>,
    pub fields: Vec<Column>,
    /// Index of the id field in `fields`.
    pub id: usize,
}

/// A field read from a column.
pub struct Column {
    pub ident: Ident,
    pub vis: Visibility,
    pub ty: Type,
    pub column: String,
}

#[derive(Default)]
struct Args {
    table: Option<LitStr>,
    schema: Option<LitStr>,
    id: Option<LitStr>,
    replica_identity: Option<LitStr>,
    krate: Option<LitStr>,
    /// Whether a key was not recognised (then a missing `table` may be that
    /// key misspelt, and is not reported).
    unknown_key: bool,
}

fn parse_args(cx: &mut Ctxt, args: TokenStream) -> Args {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        let key = meta.path.get_ident().map(|i| i.unraw().to_string());
        let slot = match key.as_deref() {
            Some(TABLE) => &mut out.table,
            Some(SCHEMA) => &mut out.schema,
            Some(ID) => &mut out.id,
            Some(REPLICA_IDENTITY) => &mut out.replica_identity,
            Some(CRATE) => &mut out.krate,
            _ => {
                out.unknown_key = true;
                let name =
                    key.unwrap_or_else(|| quote::ToTokens::to_token_stream(&meta.path).to_string());
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown key `{name}`, expected one of {}",
                        one_of(EVENT_SOURCE_KEYS)
                    ),
                );
                if meta.input.peek(syn::Token![=]) {
                    meta.value()?.parse::<syn::Expr>()?;
                }
                return Ok(());
            }
        };
        let value: LitStr = meta.value()?.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!(
                    "expected a string, as in `{} = \"...\"`",
                    key.as_deref().unwrap_or_default()
                ),
            )
        })?;
        if slot.is_some() {
            cx.error_spanned_by(
                &meta.path,
                format!(
                    "`{}` is given twice; remove one",
                    key.as_deref().unwrap_or_default()
                ),
            );
        } else {
            *slot = Some(value);
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        cx.syn_error(e);
    }
    out
}

/// `serde` attributes of the struct or of a field that matter here.
#[derive(Default)]
struct Serde {
    rename: Option<String>,
    rename_all: Option<LitStr>,
    skip: bool,
    flatten: Option<Span>,
}

fn parse_serde(cx: &mut Ctxt, attrs: &[syn::Attribute]) -> Serde {
    let mut out = Serde::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(SERDE)) {
        let result = attr.parse_nested_meta(|meta| {
            let is = |name: &str| meta.path.is_ident(name);
            if is(RENAME) || is(RENAME_ALL) {
                let mut value = None;
                if meta.input.peek(syn::Token![=]) {
                    value = Some(meta.value()?.parse::<LitStr>()?);
                } else {
                    meta.parse_nested_meta(|inner| {
                        let v = inner.value()?.parse::<LitStr>()?;
                        if inner.path.is_ident(DESERIALIZE) {
                            value = Some(v);
                        }
                        Ok(())
                    })?;
                }
                match value {
                    Some(value) if is(RENAME) => out.rename = Some(value.value()),
                    Some(value) => out.rename_all = Some(value),
                    None => {}
                }
            } else {
                if is(SKIP) || is(SKIP_DESERIALIZING) {
                    out.skip = true;
                }
                if is(FLATTEN) {
                    out.flatten = Some(meta.path.span());
                }
                skip_meta_value(&meta)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    out
}

fn skip_meta_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

impl Source {
    /// Reads and checks the declaration, reporting every mistake to `cx`.
    /// `None` when the item is not a struct with named fields.
    pub fn from_syn(cx: &mut Ctxt, args: TokenStream, item: &DeriveInput) -> Option<Source> {
        let args = parse_args(cx, args);
        let name = &item.ident;

        if args.table.is_none() && !args.unknown_key {
            cx.error_at(
                Span::call_site(),
                "missing `table`; write `#[event_source(table = \"...\")]`",
            );
        }
        for lit in [&args.table, &args.schema].into_iter().flatten() {
            if lit.value().is_empty() {
                cx.error_spanned_by(lit, "the name is empty; write the table's name");
            }
        }
        let replica_identity_full = match &args.replica_identity {
            None => true,
            Some(lit) if lit.value() == REPLICA_IDENTITY_FULL => true,
            Some(lit) if lit.value() == REPLICA_IDENTITY_DEFAULT => false,
            Some(lit) => {
                cx.error_spanned_by(
                    lit,
                    format!(
                        "expected `\"{REPLICA_IDENTITY_FULL}\"` (the default: walflow sets \
                         `REPLICA IDENTITY FULL`) or `\"{REPLICA_IDENTITY_DEFAULT}\"` (leave the \
                         table's replica identity alone)"
                    ),
                );
                true
            }
        };
        let krate = args
            .krate
            .as_ref()
            .and_then(|lit| crate::crate_path(cx, lit));
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &item.generics,
                "an event source cannot be generic; remove the generic parameters",
            );
        }

        let named = match &item.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => Some(named),
                Fields::Unnamed(fields) => {
                    cx.error_spanned_by(
                        fields,
                        "`#[event_source]` needs named fields, one per column, not a tuple struct",
                    );
                    None
                }
                Fields::Unit => {
                    cx.error_spanned_by(
                        name,
                        "`#[event_source]` needs named fields, one per column, not a unit struct",
                    );
                    None
                }
            },
            Data::Enum(e) => {
                cx.error_spanned_by(
                    e.enum_token,
                    "`#[event_source]` goes on a struct with named fields, not on an enum",
                );
                None
            }
            Data::Union(u) => {
                cx.error_spanned_by(
                    u.union_token,
                    "`#[event_source]` goes on a struct with named fields, not on a union",
                );
                None
            }
        }?;

        let container = parse_serde(cx, &item.attrs);
        let rule = container.rename_all.as_ref().and_then(|lit| {
            if case::apply(&lit.value(), "x").is_none() {
                cx.error_spanned_by(
                    lit,
                    format!(
                        "unknown `rename_all` rule, expected one of {}",
                        one_of(case::RULES)
                    ),
                );
                None
            } else {
                Some(lit.value())
            }
        });

        let mut fields = Vec::new();
        for field in &named.named {
            let ident = field.ident.clone().expect("named field");
            let serde = parse_serde(cx, &field.attrs);
            if let Some(span) = serde.flatten {
                cx.error_at(
                    span,
                    "`#[serde(flatten)]` is not supported in an event source: each field reads one column",
                );
            }
            if serde.skip {
                continue;
            }
            let plain = ident.unraw().to_string();
            let column = match (serde.rename, &rule) {
                (Some(rename), _) => rename,
                (None, Some(rule)) => case::apply(rule, &plain).unwrap_or(plain),
                (None, None) => plain,
            };
            fields.push(Column {
                ident,
                vis: field.vis.clone(),
                ty: field.ty.clone(),
                column,
            });
        }

        let id_name = args
            .id
            .as_ref()
            .map_or_else(|| DEFAULT_ID.to_owned(), LitStr::value);
        let id = fields.iter().position(|f| f.ident.unraw() == id_name);
        if id.is_none() {
            match &args.id {
                Some(lit) => cx.error_spanned_by(
                    lit,
                    format!(
                        "`{name}` has no field `{id_name}`; name the field that holds the row's id"
                    ),
                ),
                None => cx.error_spanned_by(
                    name,
                    format!(
                        "`{name}` has no field `id`; add one or name the id field with \
                         `#[event_source(id = \"...\")]`"
                    ),
                ),
            }
        }

        Some(Source {
            schema: args
                .schema
                .as_ref()
                .map_or_else(|| DEFAULT_SCHEMA.to_owned(), LitStr::value),
            table: args.table.as_ref().map(LitStr::value).unwrap_or_default(),
            replica_identity_full,
            krate,
            fields,
            id: id.unwrap_or_default(),
        })
    }
}
