//! Header hygiene on the way in and out.
