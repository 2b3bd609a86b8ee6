//! Extended attributes and POSIX ACLs (placeholder types; the module is being built).

use serde::{Deserialize, Serialize};

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: XattrValue,
}

/// The value of an attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum XattrValue {
    Raw(Vec<u8>),
}
