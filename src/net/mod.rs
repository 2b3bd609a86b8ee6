//! Between nodes: the encrypted, authenticated `transport`, the wire `protocol` (current
//! version) and `v3` (the previous release's, for rolling upgrades).

pub mod protocol;
pub mod transport;
pub mod v3;
