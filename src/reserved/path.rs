//! Path normalisation that decides whether a request is for the reserved prefix.
