//! What was written in `on_event! { ... }`: operators and their keys, read
//! without judging them (see `valid.rs`). A key whose value does not parse, an
//! unknown key and a repeated key are reported and skipped, so the rest is
//! still read.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitBool, LitStr, Path, Token, Visibility, braced, bracketed};

use crate::ctxt::Ctxt;
use crate::symbol::*;

/// One `operator Name [for Target] { ... }`.
pub struct Operator {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub target: Option<Path>,
    pub events: Option<Keyed<Events>>,
    pub entities: Option<Keyed<Vec<Path>>>,
    pub id: Option<Keyed<Vec<IdEntry>>>,
    pub delete_with: Option<Keyed<Vec<Path>>>,
    pub coalesce: Option<Keyed<LitBool>>,
    pub query: Option<Keyed<LitStr>>,
    pub handler: Option<Keyed<Path>>,
    /// The `#[event_source]` tables a handler writes.
    pub writes: Option<Keyed<Vec<Path>>>,
    /// Whether a key was not recognised (then a missing key may be that one
    /// misspelt, and is not reported).
    pub unknown_key: bool,
}

/// A value with the key it was given under (for error spans).
pub struct Keyed<T> {
    pub key: Ident,
    pub value: T,
}

/// `all` or `[insert, update, ...]`.
pub enum Events {
    All,
    List(Span, Vec<Ident>),
}

/// `Entity.field`.
pub struct IdEntry {
    pub entity: Path,
    pub field: Ident,
}

impl Parse for Events {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(syn::token::Bracket) {
            let content;
            let bracket = bracketed!(content in input);
            let kinds =
                Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
            Ok(Events::List(
                bracket.span.join(),
                kinds.into_iter().collect(),
            ))
        } else {
            let lookahead = input.lookahead1();
            if lookahead.peek(Ident) {
                let word: Ident = input.parse()?;
                if word == ALL {
                    return Ok(Events::All);
                }
                return Err(syn::Error::new(
                    word.span(),
                    format!(
                        "expected `all` or a list of event kinds such as `[insert, update]`, found `{word}`"
                    ),
                ));
            }
            Err(syn::Error::new(
                input.span(),
                "expected `all` or a list of event kinds such as `[insert, update]`",
            ))
        }
    }
}

fn paths(input: ParseStream<'_>) -> syn::Result<Vec<Path>> {
    let content;
    bracketed!(content in input);
    let list =
        Punctuated::<Path, Token![,]>::parse_terminated_with(&content, Path::parse_mod_style)?;
    Ok(list.into_iter().collect())
}

impl Parse for IdEntry {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let entity = Path::parse_mod_style(input)?;
        input.parse::<Token![.]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `Entity.field`, such as `Comment.post_id`",
            )
        })?;
        let field = Ident::parse_any(input)?;
        Ok(IdEntry { entity, field })
    }
}

fn id_entries(input: ParseStream<'_>) -> syn::Result<Vec<IdEntry>> {
    let content;
    bracketed!(content in input);
    let list = Punctuated::<IdEntry, Token![,]>::parse_terminated(&content)?;
    Ok(list.into_iter().collect())
}

/// Parses a key's value, which must fill `tokens` entirely.
fn value<T>(
    cx: &mut Ctxt,
    tokens: TokenStream,
    key: &Ident,
    parser: impl FnOnce(ParseStream<'_>) -> syn::Result<T>,
) -> Option<T> {
    if tokens.is_empty() {
        cx.error_spanned_by(key, format!("`{key}` has no value; write `{key}: ...`"));
        return None;
    }
    match parser.parse2(tokens) {
        Ok(v) => Some(v),
        Err(e) => {
            cx.syn_error(e);
            None
        }
    }
}

fn set<T>(cx: &mut Ctxt, slot: &mut Option<Keyed<T>>, key: Ident, value: Option<T>) {
    if let Some(first) = slot {
        cx.error_spanned_by(&key, format!("`{}` is given twice; remove one", first.key));
    } else if let Some(value) = value {
        *slot = Some(Keyed { key, value });
    }
}

impl Operator {
    fn parse(cx: &mut Ctxt, input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let word: Ident = input
            .call(Ident::parse_any)
            .map_err(|e| syn::Error::new(e.span(), "expected `operator Name { ... }`"))?;
        if word != OPERATOR {
            return Err(syn::Error::new(
                word.span(),
                format!(
                    "expected `operator`, found `{word}`; declare operators as `operator Name {{ ... }}`"
                ),
            ));
        }
        let name: Ident = input.parse()?;
        let target = if input.peek(Token![for]) {
            input.parse::<Token![for]>()?;
            Some(input.call(Path::parse_mod_style)?)
        } else {
            None
        };
        let body;
        braced!(body in input);

        let mut op = Operator {
            attrs,
            vis,
            name,
            target,
            events: None,
            entities: None,
            id: None,
            delete_with: None,
            coalesce: None,
            query: None,
            handler: None,
            writes: None,
            unknown_key: false,
        };
        while !body.is_empty() {
            let key = body.call(Ident::parse_any)?;
            body.parse::<Token![:]>()?;
            let mut tokens = TokenStream::new();
            while !body.is_empty() && !body.peek(Token![,]) {
                tokens.extend([body.parse::<TokenTree>()?]);
            }
            if !body.is_empty() {
                body.parse::<Token![,]>()?;
            }
            let k = key.to_string();
            match k.as_str() {
                EVENTS => {
                    let v = value(cx, tokens, &key, Events::parse);
                    set(cx, &mut op.events, key, v);
                }
                ENTITIES => {
                    let v = value(cx, tokens, &key, paths);
                    set(cx, &mut op.entities, key, v);
                }
                ID => {
                    let v = value(cx, tokens, &key, id_entries);
                    set(cx, &mut op.id, key, v);
                }
                DELETE_WITH => {
                    let v = value(cx, tokens, &key, paths);
                    set(cx, &mut op.delete_with, key, v);
                }
                COALESCE => {
                    let v = value(cx, tokens, &key, |i: ParseStream<'_>| {
                        i.parse::<LitBool>()
                            .map_err(|e| syn::Error::new(e.span(), "expected `true` or `false`"))
                    });
                    set(cx, &mut op.coalesce, key, v);
                }
                QUERY => {
                    let v = value(cx, tokens, &key, |i: ParseStream<'_>| {
                        i.parse::<LitStr>().map_err(|e| {
                            syn::Error::new(e.span(), "expected the query as a string literal")
                        })
                    });
                    set(cx, &mut op.query, key, v);
                }
                HANDLER => {
                    let v = value(cx, tokens, &key, |i: ParseStream<'_>| {
                        i.call(Path::parse_mod_style).map_err(|e| {
                            syn::Error::new(
                                e.span(),
                                "expected the handler's name, such as `notify_author`",
                            )
                        })
                    });
                    set(cx, &mut op.handler, key, v);
                }
                WRITES => {
                    let v = value(cx, tokens, &key, paths);
                    set(cx, &mut op.writes, key, v);
                }
                _ => {
                    op.unknown_key = true;
                    cx.error_spanned_by(
                        &key,
                        format!(
                            "unknown key `{key}`, expected one of {}",
                            one_of(OPERATOR_KEYS)
                        ),
                    );
                }
            }
        }
        Ok(op)
    }
}

/// Every operator of one invocation, after an optional `crate = "...";`
/// (the path walflow is reached through). Syntax errors outside a key's
/// value stop the reading; they are returned with the operators read before.
pub fn parse(cx: &mut Ctxt, input: TokenStream) -> (Option<LitStr>, Vec<Operator>) {
    let mut ops = Vec::new();
    let mut krate = None;
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            krate = Some(input.parse::<LitStr>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected a string, as in `crate = \"my_crate::walflow\";`",
                )
            })?);
            input.parse::<Token![;]>()?;
        }
        while !input.is_empty() {
            ops.push(Operator::parse(cx, input)?);
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(input) {
        cx.syn_error(e);
    }
    (krate, ops)
}

impl ToTokens for IdEntry {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.entity.to_tokens(tokens);
        <Token![.]>::default().to_tokens(tokens);
        self.field.to_tokens(tokens);
    }
}
