//! The checks a macro can make on its own. Type checks (is it an event
//! source, does the field exist, do the id types agree, does the handler fit)
//! are generated code, checked by the compiler at the user's tokens
//! (`expand.rs`).

use quote::ToTokens;
use syn::Path;

use super::ast::{Events, Operator};
use crate::ctxt::Ctxt;
use crate::sql;
use crate::symbol::*;

pub fn key(path: &Path) -> String {
    path.to_token_stream().to_string()
}

fn display(path: &Path) -> String {
    key(path).replace(' ', "")
}

pub fn check(cx: &mut Ctxt, op: &Operator) {
    let name = &op.name;

    for attr in &op.attrs {
        if !attr.path().is_ident(DOC) {
            cx.error_spanned_by(attr, "only doc comments can be put on an operator");
        }
    }

    match &op.events {
        None if op.unknown_key => {}
        None => cx.error_spanned_by(
            name,
            format!("operator `{name}` has no `events`; add `events: all` or a list such as `events: [insert]`"),
        ),
        Some(events) => match &events.value {
            Events::All => {}
            Events::List(span, kinds) => {
                if kinds.is_empty() {
                    cx.error_at(
                        *span,
                        format!(
                            "`events` is empty; list at least one of {}, or write `all`",
                            one_of(EVENT_KINDS)
                        ),
                    );
                }
                for (i, kind) in kinds.iter().enumerate() {
                    let k = kind.to_string();
                    if !EVENT_KINDS.contains(&k.as_str()) {
                        cx.error_spanned_by(
                            kind,
                            format!("unknown event kind `{k}`, expected one of {}", one_of(EVENT_KINDS)),
                        );
                    } else if kinds[..i].iter().any(|other| *other == k) {
                        cx.error_spanned_by(kind, format!("`{k}` is listed twice; remove one"));
                    } else if k == TRUNCATE && op.query.is_some() {
                        cx.error_spanned_by(
                            kind,
                            "a query operator cannot run on `truncate`: a truncate has no row to \
                             give `$1`; remove it, or use a `handler`",
                        );
                    }
                }
            }
        },
    }

    let entities: Vec<String> = match &op.entities {
        None if op.unknown_key => Vec::new(),
        None => {
            cx.error_spanned_by(
                name,
                format!(
                    "operator `{name}` has no `entities`; list the `#[event_source]` types it \
                     listens to, such as `entities: [Post]`"
                ),
            );
            Vec::new()
        }
        Some(entities) => {
            if entities.value.is_empty() {
                cx.error_spanned_by(
                    &entities.key,
                    "`entities` is empty; list the `#[event_source]` types this operator listens to",
                );
            }
            let mut seen: Vec<String> = Vec::new();
            for entity in &entities.value {
                let k = key(entity);
                if seen.contains(&k) {
                    cx.error_spanned_by(
                        entity,
                        format!(
                            "`{}` is listed twice in `entities`; remove one",
                            display(entity)
                        ),
                    );
                }
                seen.push(k);
            }
            seen
        }
    };
    let known = !entities.is_empty();

    if let Some(id) = &op.id {
        let mut seen: Vec<String> = Vec::new();
        for entry in &id.value {
            let k = key(&entry.entity);
            let e = display(&entry.entity);
            if known && !entities.contains(&k) {
                cx.error_spanned_by(
                    &entry.entity,
                    format!("`{e}` is not in `entities`; add it there or remove its `id` entry"),
                );
            } else if seen.contains(&k) {
                cx.error_spanned_by(
                    &entry.entity,
                    format!("`{e}` has two `id` entries; keep one"),
                );
            }
            seen.push(k);
        }
    }

    if let Some(delete_with) = &op.delete_with {
        let mut seen: Vec<String> = Vec::new();
        for entity in &delete_with.value {
            let k = key(entity);
            let e = display(entity);
            if known && !entities.contains(&k) {
                cx.error_spanned_by(
                    entity,
                    format!(
                        "`{e}` is not in `entities`; add it there or remove it from `delete_with`"
                    ),
                );
            } else if seen.contains(&k) {
                cx.error_spanned_by(
                    entity,
                    format!("`{e}` is listed twice in `delete_with`; remove one"),
                );
            }
            seen.push(k);
        }
    }

    match (&op.query, &op.handler) {
        (Some(_), Some(handler)) => cx.error_spanned_by(
            &handler.key,
            "an operator runs either a `query` or a `handler`, not both; remove one",
        ),
        (None, None) if op.unknown_key => {}
        (None, None) => cx.error_spanned_by(
            name,
            format!("operator `{name}` has neither `query` nor `handler`; add one"),
        ),
        (Some(query), None) => {
            if op.target.is_none() {
                cx.error_spanned_by(
                    name,
                    format!(
                        "a query operator needs the table it writes to: write `operator {name} for \
                         Target {{ ... }}`, with `Target` an `#[event_source]` type"
                    ),
                );
            }
            let params = sql::parameters(&query.value.value());
            if !params.contains(&1) {
                cx.error_spanned_by(
                    &query.value,
                    "the query never uses `$1`; it receives the mapped id as `$1`",
                );
            }
            if let Some(n) = params.iter().find(|n| **n != 1) {
                cx.error_spanned_by(
                    &query.value,
                    format!(
                        "the query uses `${n}`, but it receives one parameter: the mapped id, as `$1`"
                    ),
                );
            }
        }
        (None, Some(_)) => {
            if let Some(delete_with) = &op.delete_with {
                cx.error_spanned_by(
                    &delete_with.key,
                    "`delete_with` is for query operators; a handler receives deletes and decides \
                     itself; remove it",
                );
            }
            if let Some(coalesce) = &op.coalesce {
                cx.error_spanned_by(
                    &coalesce.key,
                    "`coalesce` is for query operators; a handler sees every event; remove it",
                );
            }
        }
    }

    if let Some(writes) = &op.writes {
        if op.query.is_some() {
            cx.error_spanned_by(
                &writes.key,
                "`writes` is for handlers: a query operator writes its target (`for Target`), \
                 which walflow knows already; remove it",
            );
            return;
        }
        if writes.value.is_empty() {
            cx.error_spanned_by(
                &writes.key,
                "`writes` is empty; list the `#[event_source]` types the handler writes, or \
                 remove it",
            );
        }
        let target = op.target.as_ref().map(key);
        let mut seen: Vec<String> = Vec::new();
        for table in &writes.value {
            let k = key(table);
            let t = display(table);
            if target.as_ref() == Some(&k) {
                cx.error_spanned_by(
                    table,
                    format!(
                        "`{t}` is the operator's target (`for {t}`), which counts as written \
                         already; remove it from `writes`"
                    ),
                );
            } else if seen.contains(&k) {
                cx.error_spanned_by(
                    table,
                    format!("`{t}` is listed twice in `writes`; remove one"),
                );
            }
            seen.push(k);
        }
    }
}
