//! `nixgate exec`: wires the exec job (see `crate::exec`) to the fleet's
//! sessions, Ctrl-C and a reporter. No controller lock and no run report:
//! exec changes nothing nixgate tracks, and must work while a push runs.

use crate::exec::{self, ExecRequest};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::report::{self, CommandName, Event, Reporter};
use crate::runner::cancel::{self, CancelLevel};

use super::{Global, Outcome};

pub fn run(
    g: &Global,
    inv: &Inventory,
    sel: &Selection,
    req: &ExecRequest,
    group: bool,
) -> anyhow::Result<Outcome> {
    let reporter: Box<dyn Reporter> = if g.json {
        Box::new(report::json::Json)
    } else {
        Box::new(report::human::exec::ExecView::new(group))
    };
    super::reporting_to(reporter, CommandName::Exec, |sink| async move {
        let (canceller, watch) = cancel::channel();
        let signals = tokio::spawn(canceller.clone().on_signals());
        let mut levels = canceller.watch();
        let level_sink = sink.clone();
        let tell = tokio::spawn(async move {
            while levels.changed().await.is_ok() {
                let level = *levels.borrow();
                level_sink.emit(Event::CancelRequested { level });
                if level >= CancelLevel::Abort {
                    return;
                }
            }
        });
        let fleet = Sessions::new(inv, g.host_key_policy());
        let counted = exec::run(fleet.clone(), sel, req, sink, watch).await;
        fleet.close_all().await;
        signals.abort();
        tell.abort();
        Ok(counted)
    })
}
