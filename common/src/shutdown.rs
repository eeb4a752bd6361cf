//! Shutdown signalling: one [`Shutdown`] trigger, many cheap listeners.

use tokio::sync::watch;

/// Tells every task of a component to stop. Dropping it also counts as stop.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// A clonable handle that resolves when shutdown starts.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self { tx }
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
        }
    }

    /// Starts the shutdown; every signal resolves.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown has started (or the trigger was dropped).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// A signal that never fires (tests, embedded use).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Self { rx }
    }
}

/// A shutdown signal that fires on Ctrl-C or SIGTERM (for binaries).
pub fn on_os_signal() -> ShutdownSignal {
    let shutdown = Shutdown::new();
    let signal = shutdown.signal();
    tokio::spawn(async move {
        os_signal().await;
        shutdown.trigger();
    });
    signal
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn os_signal() {
    {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_signal() {
        let shutdown = Shutdown::new();
        let a = shutdown.signal();
        let b = shutdown.signal();
        assert!(!a.is_triggered());
        shutdown.trigger();
        a.wait().await;
        b.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_counts_as_stop() {
        let shutdown = Shutdown::new();
        let a = shutdown.signal();
        drop(shutdown);
        a.wait().await;
    }
}
