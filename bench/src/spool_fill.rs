//! Filling a spool for the spool and memory benchmarks: concurrent writers, as reception does.
//! Included by those binaries with `#[path]` (the bench package has no library).

use volley::envelope::Envelope;
use volley::spool::Spool;

/// Stores `count` messages with `writers` concurrent tasks (at least one): message `n` gets
/// `envelope(n)`, a body of `body_bytes` and a fixed Received: header.
pub async fn store_concurrently<E>(
    spool: &Spool,
    count: usize,
    writers: usize,
    body_bytes: usize,
    envelope: E,
) -> Result<(), String>
where
    E: Fn(usize) -> Envelope + Clone + 'static,
{
    let body = vec![b'x'; body_bytes];
    let header = b"Received: from bench by volley; Thu, 1 Jan 2026 00:00:00 +0000\r\n".to_vec();
    let writers = writers.max(1);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (spool, envelope, body, header) = (
                spool.clone(),
                envelope.clone(),
                body.clone(),
                header.clone(),
            );
            glommio::spawn_local(async move {
                let mut n = w;
                while n < count {
                    let id = spool.next_id();
                    spool
                        .store(id, &envelope(n), &header, &body)
                        .await
                        .map_err(|e| e.to_string())?;
                    n += writers;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(())
}
