//! Loading: defaults < TOML file < environment, with every problem reported.
