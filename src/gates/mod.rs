//! The gates of a deploy as data: the `Goal` and the sequence of gates derived from it.
