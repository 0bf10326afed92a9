use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Runs `futures` side by side on the current task and returns their outputs in order: work for
/// different people or accounts need not wait for each other (each `Destination` bounds its own
/// concurrency).
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn join_all_keeps_the_order() {
        let slow_first = vec![
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            }) as Pin<Box<dyn Future<Output = i32> + Send>>,
            Box::pin(async { 2 }),
        ];
        assert_eq!(join_all(slow_first).await, [1, 2]);
    }
}
