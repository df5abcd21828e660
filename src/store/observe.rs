//! Every S3 request attempt, counted for the metrics: operation, HTTP status, time to the
//! response headers, body bytes each way, and whether it was a retry. An SDK interceptor, so
//! the SDK's own retries are seen one by one.

use std::time::Instant;

use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use crate::metrics::metrics;

#[derive(Debug)]
pub struct RequestObserver;

/// The attempt being sent, kept in the request's config bag between the two hooks.
#[derive(Debug, Clone)]
struct Attempt {
    started: Instant,
    /// 1 for the first attempt of an operation.
    number: u32,
    /// False once `read_after_attempt` recorded it (an attempt that fails before it is sent
    /// must not record the previous one twice).
    open: bool,
}

impl Storable for Attempt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RequestObserver {
    fn name(&self) -> &'static str {
        "bucketfs-request-observer"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let number = cfg.load::<Attempt>().map_or(1, |a| a.number + 1);
        cfg.interceptor_state().store_put(Attempt {
            started: Instant::now(),
            number,
            open: true,
        });
        let sent = context.request().body().content_length().unwrap_or(0);
        metrics().s3_bytes(sent, 0);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(attempt) = cfg.load::<Attempt>().filter(|a| a.open).cloned() else {
            return Ok(());
        };
        cfg.interceptor_state().store_put(Attempt {
            open: false,
            ..attempt.clone()
        });
        let op = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let response = context.response();
        let status = response.map(|r| r.status().as_u16());
        // A HEAD's Content-Length is the object's size, not bytes that came. (The request
        // itself is gone by now: it was consumed when sent.)
        let head = op.starts_with("Head");
        let received = response
            .filter(|_| !head)
            .and_then(|r| r.headers().get("content-length"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let m = metrics();
        m.s3_attempt(op, status, attempt.started.elapsed(), attempt.number > 1);
        m.s3_bytes(0, received);
        Ok(())
    }
}
