//! The sync engine: one lane per group (`lane`), the decisions (`decide`, pure) and their
//! effects on disk (`apply`), the links to peers (`link`; with `lists`, long chunk lists as
//! group hashes, and `relay`, which relays a peer does not need), content fetching (`fetch`),
//! the node that wires them (`node`), and what `status` and `sync` report (`status`, `sync`).

pub mod apply;
pub mod ctx;
pub mod decide;
pub mod fetch;
pub mod group;
pub mod lane;
pub mod link;
pub mod lists;
pub mod node;
pub mod peer;
pub mod relay;
pub mod status;
pub mod sync;
pub mod verify;
