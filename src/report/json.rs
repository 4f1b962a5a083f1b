//! The `--json` reporter: one event per line on stdout, nothing else.

use super::event::Event;
use super::{Reporter, json_line};

pub struct Json;

impl Reporter for Json {
    fn event(&mut self, ev: &Event) {
        json_line(ev);
    }
}
