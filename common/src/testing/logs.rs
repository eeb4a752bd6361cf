//! Capturing what a test's own thread logs. The capture layer sits in one
//! global subscriber (installed once per test binary): a scoped subscriber
//! would miss callsites that other tests' threads reached first. Tests run
//! the suite on their current-thread runtime, so a test's capture holds
//! everything its services logged, through the production log filter at
//! TRACE.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

thread_local! {
    /// Where this thread's log lines go (nowhere unless a test captures).
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Writes a log line into the capture of the thread that logs it.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(lines) = capture.borrow().as_ref() {
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The layer that writes every event production would log at TRACE, on
/// threads that capture only (the cheap per-thread check comes first). The
/// thread check is a *dynamic* filter: a plain `filter_fn` is asked once per
/// callsite and its answer cached, so a callsite first reached on a thread
/// that does not capture would never be captured again.
pub fn capture_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| ThreadCapture)
        .with_filter(
            tracing_subscriber::filter::dynamic_filter_fn(|_, _| {
                CAPTURE.with(|c| c.borrow().is_some())
            })
            .and(crate::telemetry::log_filter("trace").expect("the TRACE filter is valid")),
        )
}

/// Installs a global subscriber holding only [`capture_layer`], unless the
/// binary already has one (which should then hold the layer itself).
pub fn install() {
    let _ = tracing_subscriber::registry()
        .with(capture_layer())
        .try_init();
}

/// Starts capturing this thread's log output.
pub fn start() -> LogCapture {
    let lines = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|capture| *capture.borrow_mut() = Some(lines.clone()));
    LogCapture(lines)
}

/// The log output captured for one test thread.
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
