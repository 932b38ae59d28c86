//! Config parsing: arbitrary TOML or JSON text (first byte picks the
//! format) gives a config or a `ConfigError`, never a panic.
#![no_main]
use std::io::Write;

use frenly::config::{load, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let file = dir
        .path()
        .join(if mode % 2 == 0 { "f.toml" } else { "f.json" });
    let Ok(mut f) = std::fs::File::create(&file) else {
        return;
    };
    if f.write_all(text).is_err() {
        return;
    }
    drop(f);
    let source = Source {
        file: Some(file),
        data_dir: Some(dir.path().join("data")),
        env: Vec::new(),
    };
    if let Ok(cfg) = load(&source) {
        let _ = cfg.redacted();
        let _ = cfg.listens_on_loopback();
    }
});
