//! What this node sees of its own disk: which entries a group syncs (`filter`), owners by name
//! (`owners`), the comparison of the disk with the index (`scan`) and live change events
//! (`watch`, with its coalescing windows in `window`).

pub mod filter;
pub mod owners;
pub mod scan;
pub mod watch;
pub mod window;
