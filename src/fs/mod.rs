//! Low-level filesystem layers used by the engine: extended attributes and POSIX ACLs.
pub mod xattr;
