//! placeholder
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck;
