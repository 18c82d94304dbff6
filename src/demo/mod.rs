//! The bundled legacy demo app that `sessiongate demo` puts behind the gateway.
