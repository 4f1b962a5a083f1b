//! `nixgate exec`: wires the exec job (see `crate::exec`) to the fleet's
//! sessions, Ctrl-C and a reporter. No controller lock and no run report:
//! exec changes nothing nixgate tracks, and must work while a push runs.

use crate::exec::{self, ExecRequest};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::report::{self, CommandName, Reporter};

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
        // The hosts see a level once its notice is out (a host hung up on
        // Ctrl-C reports after it).
        let (watch, signals) = super::run_session::on_signals(
            tokio_util::sync::CancellationToken::new(),
            sink.clone(),
        );
        let fleet = Sessions::new(inv, g.host_key_policy());
        let counted = exec::run(fleet.clone(), sel, req, sink, watch).await;
        fleet.close_all().await;
        signals.abort();
        Ok(counted)
    })
}
