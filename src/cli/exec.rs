//! `nixgate exec`: wires the exec job (see `crate::exec`) to the fleet's
//! sessions, Ctrl-C and a reporter. No controller lock and no run report:
//! exec changes nothing nixgate tracks, and must work while a push runs.

use crate::exec::{self, ExecRequest};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::report::{self, CommandName, Reporter};
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
        let (canceller, _) = cancel::channel();
        let signals = tokio::spawn(canceller.clone().on_signals());
        // The hosts see a level once its notice is out.
        let (announce, watch) = tokio::sync::watch::channel(CancelLevel::Running);
        let tell = tokio::spawn(super::run_session::announce_levels(
            canceller.watch(),
            announce,
            tokio_util::sync::CancellationToken::new(),
            sink.clone(),
        ));
        let fleet = Sessions::new(inv, g.host_key_policy());
        let counted = exec::run(fleet.clone(), sel, req, sink, watch).await;
        fleet.close_all().await;
        signals.abort();
        tell.abort();
        Ok(counted)
    })
}
