//! `nixgate upload-keys [SELECTOR]`: write the selected hosts' keys without
//! deploying, at most `max_parallel` hosts at once. Exit 0 when every host
//! got all its keys, 1 otherwise; a host that fails is reported, not fatal
//! for the others.

use std::sync::Arc;

use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::keys::standalone::{self, KeysFailure};
use crate::report::{CommandName, Event, EventSink};

use super::{Global, Outcome, reporting};

pub fn run(g: &Global, inv: &Inventory, sel: &Selection) -> anyhow::Result<Outcome> {
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let passwords = super::sudo_password::obtain(g, inv, &hosts)?;
    let fleet = Sessions::with_passwords(inv, g.host_key_policy(), passwords);
    reporting(g, CommandName::UploadKeys, |sink| async move {
        let turns = Arc::new(tokio::sync::Semaphore::new(inv.max_parallel.max(1)));
        let all = hosts.iter().map(|h| {
            let (turns, fleet, sink) = (turns.clone(), fleet.clone(), sink.clone());
            async move {
                let _turn = turns.acquire().await.ok();
                one(&fleet, inv, h, &sink).await
            }
        });
        let results = futures_util::future::join_all(all).await;
        fleet.close_all().await;
        let failed = results.iter().filter(|ok| !**ok).count();
        Ok((results.len() - failed, failed))
    })
}

/// One host: read its keys, then write them. True when all were written.
async fn one(fleet: &Sessions, inv: &Inventory, name: &str, sink: &EventSink) -> bool {
    let Some(host) = inv.host(name) else {
        return false;
    };
    let result = async {
        let keys = standalone::read(host).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let remote = fleet.host(name).await.map_err(|e| match e.sudo_check() {
            Some(check) => KeysFailure::Sudo(check),
            None => KeysFailure::Unreachable {
                error: e.to_string(),
            },
        })?;
        standalone::write(&remote, host, &keys).await
    }
    .await;
    match result {
        Ok(keys) => {
            sink.emit(Event::KeysUploaded {
                host: name.to_owned(),
                keys,
            });
            true
        }
        Err(reason) => {
            sink.emit(Event::KeysFailed {
                host: name.to_owned(),
                reason,
            });
            false
        }
    }
}
