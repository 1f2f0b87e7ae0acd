//! Binding a mapped id ([`Value`]) as `$1` with its real type.

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::postgres::types::PgInterval;
use sqlx::query::Query;

use crate::value::Value;

/// Binds `value` to `query`, or says why it cannot be bound.
///
/// Every scalar type walflow decodes binds with its PostgreSQL type except
/// `numeric` (sqlx needs a decimal crate for it: map a `numeric` id through a
/// query that casts, or use an integer, text or uuid id) and arrays.
pub(crate) fn bind_value<'q>(
    query: Query<'q, Postgres, PgArguments>,
    value: &Value,
) -> Result<Query<'q, Postgres, PgArguments>, String> {
    Ok(match value.clone() {
        Value::Null => query.bind(None::<String>),
        Value::Bool(v) => query.bind(v),
        Value::Int2(v) => query.bind(v),
        Value::Int4(v) => query.bind(v),
        Value::Int8(v) => query.bind(v),
        Value::Float4(v) => query.bind(v),
        Value::Float8(v) => query.bind(v),
        Value::Text(v) => query.bind(v),
        Value::Uuid(v) => query.bind(v),
        Value::Date(v) => query.bind(v),
        Value::Time(v) => query.bind(v),
        Value::Timestamp(v) => query.bind(v),
        Value::TimestampTz(v) => query.bind(v),
        Value::Interval(v) => query.bind(PgInterval {
            months: v.months,
            days: v.days,
            microseconds: v.microseconds,
        }),
        Value::Json(v) => query.bind(sqlx::types::Json(v)),
        Value::Bytea(v) => query.bind(v),
        Value::Numeric(n) => {
            return Err(format!(
                "the id {n} is a `numeric`, which walflow cannot bind as $1; use an integer, text or uuid id"
            ));
        }
        Value::Array(_) => return Err("an array cannot be bound as the id $1".to_owned()),
        Value::Invalid(i) => return Err(format!("the id column's value: {i}")),
        Value::UnchangedToast => {
            return Err("the id column's value was not sent (unchanged TOAST)".to_owned());
        }
    })
}
