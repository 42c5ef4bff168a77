//! `mlops-embed`: Run the exported TorchScript model over data shards and write embeddings.
//!
//! Not implemented yet: this crate is an empty placeholder in the workspace so that the layout
//! and CI are in place; it exposes no API and ships no binary until its issue lands.
