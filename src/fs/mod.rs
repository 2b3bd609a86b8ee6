//! The filesystem on behalf of the cluster: the one careful writer (`safefs`), content
//! identity (`chunk`), kept previous versions (`backup`) and extended attributes (`xattr`).

pub mod backup;
pub mod chunk;
pub mod safefs;
pub mod xattr;
