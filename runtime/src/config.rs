//! Runtime configuration.

/// Runtime configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {}
