//! SSH transport (russh): connections, authentication, host-key verification, ssh config.
