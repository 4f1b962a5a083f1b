//! Activation on a host: the seven remote steps and their typed outcomes.
