//! The integration suite: one binary, the real server, a real database
//! (SQLite by default; PostgreSQL when STRONGROOM_TEST_PG_URL is set).

mod abuse;
mod access;
mod access_log;
mod audit;
mod auth;
mod backups;
mod cluster;
mod contract;
mod devices;
mod durability;
mod files;
mod freed;
mod front_door;
mod health;
mod helpers;
mod keys;
mod layering;
mod lockout;
mod mail;
mod metrics;
mod mfa;
mod passkeys;
mod passwords;
mod posture;
mod races;
mod records;
mod restore;
mod secrets;
mod sms;
mod supply;
mod support;
mod tenancy;
mod upgrade;
mod users;

#[global_allocator]
static ALLOCATOR: freed::Watching = freed::Watching;
