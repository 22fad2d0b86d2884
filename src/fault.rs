//! Faults that the test suite injects into the debug build, to prove that a bug in one unit of
//! work costs that unit only. Never compiled into a release build.
//!
//! `DROPSYNC_INJECT_PANIC="parse:poison.csv,forward:C-9"` makes the daemon panic where the
//! named point meets the named file or conversation, as a bug in that code would.

/// Panics if the test suite asked for a panic at `point` for `subject` (debug builds only).
pub fn panic_point(point: &str, subject: &str) {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("DROPSYNC_INJECT_PANIC")
        && spec.split(',').any(|p| p.split_once(':') == Some((point, subject)))
    {
        panic!("injected panic at {point} for {subject}");
    }
    #[cfg(not(debug_assertions))]
    let _ = (point, subject);
}

/// The message a caught panic carries, for logs and reports.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("internal error (a bug in dropsync, please report it): {text}")
}
