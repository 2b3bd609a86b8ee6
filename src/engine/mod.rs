//! The sync engine: one lane per group (`lane`), the decisions (`decide`, pure) and their
//! effects on disk (`apply`), the links to peers (`link`), content fetching (`fetch`) and the
//! node that wires them (`node`).

pub mod decide;
