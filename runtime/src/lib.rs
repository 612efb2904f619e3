//! The `runtime` binary's library: CLI, graph loading and the commands.

pub mod cli;
pub mod graph;
pub mod inspect;
