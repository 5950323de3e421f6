//! The config parser never panics, and every error it reports names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ_SECRET").then(|| "s3cr3t".to_string());
    if let Err(errors) =
        kcr_housekeeper::config::parse(text, "fuzz.toml", std::path::Path::new("."), &env)
    {
        let shown = errors.to_string();
        assert!(!shown.is_empty());
        for line in shown.lines().filter(|l| l.contains(": ")) {
            if !line.starts_with(char::is_whitespace) && !line.ends_with("in configuration") {
                assert!(
                    line.starts_with("fuzz.toml"),
                    "error without its file: {line}"
                );
            }
        }
        assert!(!shown.contains("s3cr3t"), "a secret in an error");
    }
});
