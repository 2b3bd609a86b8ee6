//! clustersync: live multi-master file synchronisation for server clusters.
//!
//! The layers, top to bottom (arrows only point down): `cli` (the binary's edge) → `ops`
//! (control socket, audit log) → `engine` (lanes, links, decisions, apply) → `net`
//! (transport, protocol), `local` (scan, watch, filter, owners), `fs` (the careful writer,
//! chunks, backups, attributes) → `store` (the index) → `item` (what replicates), `config`.
//! See ARCHITECTURE.md for one change followed from one node to another.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod fs;
pub mod identity;
pub mod import;
pub mod item;
pub mod local;
pub mod net;
pub mod ops;
pub mod release;
pub mod store;
