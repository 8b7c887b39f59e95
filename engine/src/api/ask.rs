//! Asking cores a question through the router and awaiting their answers, within a deadline.

use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::ApiCore;
use crate::router::{CoreMessage, Question};

/// Why the answers did not all come.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error("core {core} did not answer within {wait_ms} ms (the work goes on there)")]
    Late { core: usize, wait_ms: u64 },
    #[error("core {core} dropped the question (stopping?)")]
    Dropped { core: usize },
}

/// Sends `make(answer)` to each core of `cores` and awaits every answer, for `wait_ms` at most
/// in all.
pub async fn ask<T>(
    core: &ApiCore,
    cores: impl IntoIterator<Item = usize>,
    wait_ms: u64,
    make: impl Fn(oneshot::Sender<T>) -> Question,
) -> Result<Vec<T>, AskError> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let router = core.router();
    let mut waiting = Vec::new();
    for c in cores {
        let (tx, rx) = oneshot::channel();
        router.send(c, CoreMessage::Ask(make(tx))).await;
        waiting.push((c, rx));
    }
    let mut answers = Vec::with_capacity(waiting.len());
    for (c, rx) in waiting {
        let left = deadline.saturating_duration_since(Instant::now());
        let late = async {
            glommio::timer::sleep(left).await;
            Err(AskError::Late { core: c, wait_ms })
        };
        let answer = async { rx.await.map_err(|_| AskError::Dropped { core: c }) };
        answers.push(futures_lite::future::or(answer, late).await?);
    }
    Ok(answers)
}

/// Every core.
pub async fn ask_all<T>(
    core: &ApiCore,
    wait_ms: u64,
    make: impl Fn(oneshot::Sender<T>) -> Question,
) -> Result<Vec<T>, AskError> {
    ask(core, 0..core.router().cores, wait_ms, make).await
}
