//! Operating the daemon: what runs beside the sync engine for the administrator.
//!
//! `actions` runs commands after synced changes (SPEC §5.8); `metrics` serves `/metrics` and
//! `/health` over HTTP (SPEC §5.10); `notify` tells systemd about start-up, status, reloads and
//! liveness (SPEC §5.12). Each is self-contained: the engine owns the handles and feeds them;
//! none of them reaches into the engine's state.

pub mod actions;
pub mod metrics;
pub mod notify;
