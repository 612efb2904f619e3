//! Sources: where the records of each epoch come from.

pub mod import;
pub mod kafka;
pub mod raw;
