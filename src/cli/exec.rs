//! `nixgate exec`: wires the exec job (see `crate::exec`) to the fleet's
//! sessions, Ctrl-C and a reporter. No controller lock and no run report:
//! exec changes nothing nixgate tracks, and must work while a push runs.

use crate::exec::{self, ExecRequest};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::report::{self, CommandName, Ending, Event, Reporter};
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
    tokio::runtime::Runtime::new()?.block_on(async {
        let (sink, reporter) = report::spawn(reporter, None);
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
        let (ok, failed) = exec::run(fleet.clone(), sel, req, sink.clone(), watch).await;
        fleet.close_all().await;
        signals.abort();
        tell.abort();
        let outcome = if failed == 0 {
            Outcome::Success
        } else {
            Outcome::HostsFailed
        };
        sink.emit(Event::Summary {
            command: CommandName::Exec,
            run_id: None,
            ending: Ending::Completed,
            exit_code: outcome as u8,
            ok,
            failed,
            hosts: Vec::new(),
        });
        drop(sink);
        let _ = reporter.await;
        Ok(outcome)
    })
}
