//! The filesystem on behalf of the cluster: the one careful writer (`safefs`), content
//! identity (`chunk`), kept previous versions (`backup`), extended attributes (`xattr`) and
//! independent work on several threads (`par`).

pub mod backup;
pub mod chunk;
pub mod par;
pub mod safefs;
pub mod xattr;
