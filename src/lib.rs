//! clustersync: live multi-master file synchronisation for server clusters.
//!
//! Modules follow one change through the system (see ARCHITECTURE.md): `watch` and `scan`
//! notice it, `index` records it with its `version` vector, `peer` announces it over a
//! `transport` link in `protocol` messages, and on the other node `apply` fetches the missing
//! `chunk`s and installs the result through `safefs`, keeping a `backup` of what it replaces.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod apply;
pub mod audit;
pub mod backup;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod filter;
pub mod identity;
pub mod index;
pub mod node;
pub mod owners;
pub mod paths;
pub mod peer;
pub mod protocol;
pub mod record;
pub mod safefs;
pub mod scan;
pub mod transport;
pub mod version;
pub mod watch;
