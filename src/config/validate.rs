//! Semantic checks on a deserialized [`Config`](super::Config).
