//! Test-only fault injection at every fallible call of the rotation and
//! retention paths (Step 7: "every fallible call", not only step boundaries).
//!
//! A call site names its failpoint and says how to build its own error:
//!
//! ```ignore
//! failpoint::hit("tokens.state.set_delivered", |m| StateError::Injected(m))?;
//! state.set_step(..)?;
//! ```
//!
//! Without the `failpoints` cargo feature [`hit`] is an inlined `Ok(())`.
//! With it, two environment variables drive it:
//! - `KCR_HOUSEKEEPER_FAILPOINT=NAME` or `NAME=abort` aborts the process at
//!   NAME (a crash); `NAME=error` makes the call fail with the site's error;
//!   `NAME=error*N` fails the first N passes only (then the call proceeds).
//!   Several, comma-separated, arm several points at once.
//! - `KCR_HOUSEKEEPER_FAILPOINT_TRACE=FILE` appends every name passed, one a
//!   line, so a test can enumerate the failpoints a clean run goes through and
//!   then inject at each one.

/// Passes the failpoint `name`: `Ok(())` unless a test asked for a fault here.
/// `make` builds the call site's own error from a message naming the point.
#[cfg(feature = "failpoints")]
pub fn hit<E>(name: &'static str, make: impl FnOnce(String) -> E) -> Result<(), E> {
    armed::hit(name, make)
}

/// Passes the failpoint `name`: always `Ok(())` in a build without the
/// `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit<E>(_name: &'static str, _make: impl FnOnce(String) -> E) -> Result<(), E> {
    Ok(())
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::io::Write;
    use std::sync::Mutex;

    /// Errors left to inject, per failpoint name (set on its first pass).
    static ERRORS_LEFT: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

    pub(super) fn hit<E>(name: &'static str, make: impl FnOnce(String) -> E) -> Result<(), E> {
        if let Ok(path) = std::env::var("KCR_HOUSEKEEPER_FAILPOINT_TRACE")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = writeln!(f, "{name}");
        }
        let Ok(spec) = std::env::var("KCR_HOUSEKEEPER_FAILPOINT") else {
            return Ok(());
        };
        // A comma-separated list: a fault reached only after another one
        // (a retry after a lost reply) is injected together with it.
        let Some(mode) = spec.split(',').find_map(|one| {
            let (target, mode) = one.split_once('=').unwrap_or((one, "abort"));
            (target.trim() == name).then(|| mode.trim().to_owned())
        }) else {
            return Ok(());
        };
        if mode == "abort" {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
        let Some(rest) = mode.strip_prefix("error") else {
            return Ok(());
        };
        let limit = rest
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        let mut left = ERRORS_LEFT.lock().unwrap_or_else(|p| p.into_inner());
        if !left.iter().any(|(n, _)| n == name) {
            left.push((name.to_string(), limit));
        }
        match left.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) if *count > 0 => {
                *count -= 1;
                eprintln!("failpoint {name}: injected error");
                Err(make(format!("injected fault at failpoint {name}")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unarmed_failpoint_passes() {
        // No KCR_HOUSEKEEPER_FAILPOINT in the unit-test environment.
        let r: Result<(), String> = super::hit("test.unarmed", |m| m);
        assert!(r.is_ok());
    }
}
