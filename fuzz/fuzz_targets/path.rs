//! The reserved-path normaliser: never panics, always absolute, idempotent, and a
//! path whose canonical form is under the prefix is always reserved.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::web::path::{normalize, reserved_endpoint};

const PREFIX: &str = "/__sessiongate";

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize(path);
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    let twice = normalize(&once);
    assert_eq!(once, twice, "not idempotent for {path:?}");
    if once.starts_with(PREFIX) {
        assert!(
            reserved_endpoint(path, PREFIX).is_some(),
            "{path:?} normalises under the prefix but is not reserved"
        );
    }
});
