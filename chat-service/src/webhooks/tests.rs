//! Webhook tests: a local receiver that fails, then recovers.
