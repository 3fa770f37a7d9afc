//! Model families. Each family keeps what its backends share (weights by name, what a peer
//! loads, the span seam) in its `mod.rs`, and one module per backend with that backend's
//! block math.

pub mod llama;
