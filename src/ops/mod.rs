//! The node's edges to the people and programs around it: the control socket the CLI uses
//! (`control`), the audit log (`audit`), commands run after synced changes (`actions`, SPEC
//! §5.8), `/metrics` and `/health` over HTTP (`metrics`, SPEC §5.10), and systemd's notify
//! protocol (`notify`, SPEC §5.12). Each is self-contained: the engine owns the handles and
//! feeds them; none of them reaches into the engine's state.

pub mod actions;
pub mod audit;
pub mod control;
pub mod metrics;
pub mod notify;
