//! The node's edges to the people and programs around it: the control socket the CLI uses
//! (`control`) and the audit log (`audit`).

pub mod audit;
pub mod control;
