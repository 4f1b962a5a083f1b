//! Gate 2: closure diff and root-cause analysis (package versions and derivation structure).
