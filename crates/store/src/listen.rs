//! A connection that hears every committed write's version (`LISTEN tollgate_entitlements`).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::schema::CHANNEL;

/// What the listening connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A write of this version committed.
    Notified(i64),
    /// The connection ended; nothing more will be heard on it.
    Closed(String),
}

/// Connects and listens. The client also serves reads (deltas, snapshots) on the same
/// connection, so a notification is never read ahead of the rows it announces.
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<Event>)> {
    let (client, mut connection) =
        tokio::time::timeout(timeout, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))??;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Ok(v) = n.payload().parse() {
                        let _ = tx.send(Event::Notified(v));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Event::Closed(e.to_string()));
                    return;
                }
            }
        }
        let _ = tx.send(Event::Closed("the server closed the connection".into()));
    });
    tokio::time::timeout(timeout, client.batch_execute(&format!("LISTEN {CHANNEL}")))
        .await
        .map_err(|_| anyhow::anyhow!("LISTEN timed out after {timeout:?}"))??;
    Ok((client, rx))
}
