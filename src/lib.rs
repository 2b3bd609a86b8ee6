//! clustersync: live multi-master file synchronisation for server clusters.
#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod fs;
pub mod identity;
pub mod item;
pub mod local;
pub mod net;
pub mod store;
