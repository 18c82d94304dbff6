//! Query-string handling for the proxy's own `__sg*` parameters.
