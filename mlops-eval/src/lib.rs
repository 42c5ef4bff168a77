//! `mlops-eval`: Classify test embeddings through the index, compute metrics and decide deployment.
//!
//! Not implemented yet: this crate is an empty placeholder in the workspace so that the layout
//! and CI are in place; it exposes no API and ships no binary until its issue lands.
