//! Ids of any type sqlx binds: `Uuid`, `String`, `i32`; an id field not
//! named `id`; the id mapped through another field of the same type.

use walflow::prelude::*;

#[event_source(table = "accounts")]
#[derive(Debug, serde::Deserialize)]
pub struct Account {
    pub id: uuid::Uuid,
    pub name: String,
}

#[event_source(table = "orders")]
#[derive(Debug, serde::Deserialize)]
pub struct Order {
    pub id: i32,
    pub account_id: uuid::Uuid,
}

#[event_source(table = "account_totals")]
#[derive(Debug, serde::Deserialize)]
pub struct AccountTotal {
    pub id: uuid::Uuid,
    pub orders: i64,
}

#[event_source(table = "countries", id = "code")]
#[derive(Debug, serde::Deserialize)]
pub struct Country {
    pub code: String,
    pub name: String,
}

#[event_source(table = "country_stats", id = "country")]
#[derive(Debug, serde::Deserialize)]
pub struct CountryStat {
    pub country: String,
    pub population: i64,
}

#[event_source(table = "counters")]
#[derive(Debug, serde::Deserialize)]
pub struct Counter {
    pub id: i32,
}

on_event! {
    operator AccountTotals for AccountTotal {
        events: [insert, update, delete],
        entities: [Order, Account],
        id: [Order.account_id],
        delete_with: [Account],
        query: "SELECT $1::uuid",
    }

    operator CountryStats for CountryStat {
        events: [insert, delete],
        entities: [Country],
        query: "INSERT INTO country_stats (country, population) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    }

    operator Counters {
        events: [update],
        entities: [Counter, Order],
        handler: on_counter,
    }
}

#[event_enum]
enum CounterEvent {
    Counter(Event<Counter>),
    Order(Event<Order>),
}

async fn on_counter(_: CounterEvent, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {
    let registry = walflow::Registry::from_inventory().unwrap();
    let totals = registry.operator("AccountTotals").unwrap();
    let mapping: Vec<_> = totals.id_mapping.iter().map(|m| (m.table.table, m.column)).collect();
    assert_eq!(mapping, [("orders", "account_id"), ("accounts", "id")]);
    let stats = registry.operator("CountryStats").unwrap();
    assert_eq!(stats.id_mapping[0].column, "code");
    assert_eq!(stats.target.unwrap().id_column, "country");
    let _: Field<Country, String> = Country::CODE;
    let _: Field<Counter, i32> = Counter::ID;
    let _: <Account as EventSource>::Id = uuid::Uuid::nil();
}
