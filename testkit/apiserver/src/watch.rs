//! Watch responses: a chunked stream of newline-delimited `WatchEvent` JSON, fed by the
//! store's per-watch channel, with periodic BOOKMARKs (queued through the store so they stay
//! in order with events) and the `timeoutSeconds` deadline. Dropping the stream (client gone)
//! unregisters the watch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Inner;
use crate::render::Presentation;
use crate::service::ResponseBody;
use crate::store::Frame;

pub(crate) struct WatchOptions {
    pub view: Presentation,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub bookmark_interval: Duration,
}

/// Unregisters the watch when the response stream is dropped.
struct Registration {
    inner: Arc<Inner>,
    id: Option<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.state().unwatch(id);
        }
    }
}

struct Watch {
    registration: Registration,
    rx: mpsc::UnboundedReceiver<Frame>,
    options: WatchOptions,
    deadline: Option<Instant>,
    ticker: tokio::time::Interval,
}

impl Watch {
    fn render(&self, frame: Frame) -> Value {
        let view = &self.options.view;
        match frame {
            Frame::Event(kind, object) => json!({"type": kind, "object": view.object(object)}),
            Frame::Bookmark {
                rv,
                initial_events_end,
            } => {
                json!({"type": "BOOKMARK", "object": view.bookmark(rv, initial_events_end)})
            }
            Frame::Error(status) => json!({"type": "ERROR", "object": status}),
        }
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let deadline = self.deadline;
            tokio::select! {
                frame = self.rx.recv() => return frame,
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => return None,
                _ = self.ticker.tick(), if self.options.bookmarks => {
                    if let Some(id) = self.registration.id {
                        self.registration.inner.state().bookmark(id);
                    }
                }
            }
        }
    }
}

pub(crate) fn stream_body(
    inner: Arc<Inner>,
    id: Option<u64>,
    rx: mpsc::UnboundedReceiver<Frame>,
    options: WatchOptions,
) -> ResponseBody {
    let mut ticker = tokio::time::interval_at(
        Instant::now() + options.bookmark_interval,
        options.bookmark_interval,
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watch = Watch {
        registration: Registration { inner, id },
        rx,
        deadline: options.timeout.map(|t| Instant::now() + t),
        options,
        ticker,
    };
    let stream = futures::stream::unfold(watch, |mut watch| async move {
        let frame = watch.next_frame().await?;
        let mut line = watch.render(frame).to_string();
        line.push('\n');
        Some((
            Ok::<_, Infallible>(BodyFrame::data(Bytes::from(line))),
            watch,
        ))
    });
    StreamBody::new(stream).boxed_unsync()
}
