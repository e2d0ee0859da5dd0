//! Publisher confirms (RabbitMQ's `confirm.select` extension) at the
//! connection level: each channel's confirm batches are handed to one
//! blocking waiter per connection, which reports back when their publishes
//! are durable so that `basic.ack` or `basic.nack` can go out. The
//! per-channel bookkeeping (`Confirms`, `confirm_select`) is in `channel.rs`.

use tokio::sync::mpsc;

use super::Connection;

/// A confirm batch whose wait is over, reported back to the connection task.
pub(super) struct ConfirmDone {
    channel: u16,
    batch: u64,
    ok: bool,
}

impl Connection {
    pub(super) fn confirm_done(&mut self, done: ConfirmDone) {
        if let Some(confirms) = self
            .channels
            .get_mut(&done.channel)
            .and_then(|c| c.confirms.as_mut())
        {
            confirms.finished(done.batch, done.ok);
            confirms.emit(done.channel, &mut self.out);
        }
    }

    /// Starts waiting for the syncs of publishes to confirm and sends the
    /// confirms that need no wait.
    pub(super) fn seal_confirms(&mut self) {
        for (id, channel) in self.channels.iter_mut() {
            let Some(confirms) = channel.confirms.as_mut() else {
                continue;
            };
            if let Some((batch, acks)) = confirms.seal() {
                let request = SyncRequest {
                    channel: *id,
                    batch,
                    acks,
                };
                let syncer = self.syncer.get_or_insert_with(|| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let done = self.confirms_tx.clone();
                    tokio::task::spawn_blocking(move || wait_for_syncs(rx, done));
                    tx
                });
                if let Err(std::sync::mpsc::SendError(request)) = syncer.send(request) {
                    // The waiter is gone only if its task panicked: nack.
                    let _ = self.confirms_tx.send(ConfirmDone {
                        channel: request.channel,
                        batch: request.batch,
                        ok: false,
                    });
                }
            }
            confirms.emit(*id, &mut self.out);
        }
    }
}

/// Publishes of one channel's confirm batch waiting to be durable.
pub(super) struct SyncRequest {
    channel: u16,
    batch: u64,
    acks: sluice_core::Acks,
}

/// Waits for confirm batches to be durable, one connection's at a time:
/// everything queued while a sync runs is covered by the next one (one
/// wait per log, at its furthest offset), so a busy publisher costs one
/// thread hand-off per group commit, not one per batch.
fn wait_for_syncs(
    requests: std::sync::mpsc::Receiver<SyncRequest>,
    done: mpsc::UnboundedSender<ConfirmDone>,
) {
    while let Ok(first) = requests.recv() {
        let mut pending = vec![first];
        pending.extend(requests.try_iter());
        let mut furthest = sluice_core::Acks::default();
        for request in &mut pending {
            furthest.merge(std::mem::take(&mut request.acks));
        }
        let ok = match furthest.wait() {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "a publish could not be made durable; nacking");
                false
            }
        };
        for request in pending {
            if done
                .send(ConfirmDone {
                    channel: request.channel,
                    batch: request.batch,
                    ok,
                })
                .is_err()
            {
                return;
            }
        }
    }
}
