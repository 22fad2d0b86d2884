//! `[metrics] listen`: `/metrics` in Prometheus text format and `/healthz`.
//!
//! Counters and histograms are recorded where things happen (sessions, bytes and files received,
//! forward latency, sink errors); conversations by state are read from the catalog when scraped.
//! The endpoint is a few lines of HTTP/1.1 on the runtime: two fixed GET paths, nothing else.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, ConvState};
use crate::config::LiveConfig;
use crate::worker::Liveness;

/// Installs the process-wide recorder; returns the handle that renders it.
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("dropsync_forward_latency_seconds".into()),
            &buckets,
        )
        .ok()?;
    match builder.install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    }
}

/// Serves `/metrics` and `/healthz` until cancelled.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    catalog: Catalog,
    config: LiveConfig,
    liveness: Arc<Liveness>,
    cancel: CancellationToken,
) {
    let mut requests = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        while requests.try_join_next().is_some() {}
        let (handle, catalog, config, liveness) = (handle.clone(), catalog.clone(), config.clone(), liveness.clone());
        requests.spawn(async move {
            let answered = answer(stream, handle, catalog, config, liveness);
            let _ = tokio::time::timeout(Duration::from_secs(10), answered).await;
        });
    }
}

async fn answer(
    stream: tokio::net::TcpStream,
    handle: PrometheusHandle,
    catalog: Catalog,
    config: LiveConfig,
    liveness: Arc<Liveness>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = lines.next_line().await?.unwrap_or_default();
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => {
            record_states(&catalog).await;
            record_minutes(&catalog, &config).await;
            // What /healthz says, for a dashboard and an alert.
            let healthy = health(&catalog, &liveness).await.is_ok();
            metrics::gauge!("dropsync_healthy").set(if healthy { 1.0 } else { 0.0 });
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        "/healthz" => match health(&catalog, &liveness).await {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        _ => ("404 Not Found", "text/plain", "try /metrics or /healthz\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

/// Whether the catalog answers and the work loops show progress (`/healthz`); why not.
async fn health(catalog: &Catalog, liveness: &Liveness) -> Result<(), String> {
    if catalog.run(|c| c.forward_queue().next_due()).await.is_err() {
        return Err("catalog does not answer".into());
    }
    liveness.check().map_err(|why| why.to_string())
}

/// Conversations by tenant and state, from the catalog, as gauges.
async fn record_states(catalog: &Catalog) {
    let Ok(view) = catalog.run(|c| c.reports().status(None)).await else {
        return;
    };
    for (tenant, t) in view.tenants {
        for state in ConvState::ALL {
            let n = t.states.get(state.as_str()).copied().unwrap_or(0);
            metrics::gauge!("dropsync_conversations", "tenant" => tenant.clone(), "state" => state.as_str())
                .set(n as f64);
        }
        metrics::gauge!("dropsync_orphan_recordings", "tenant" => tenant.clone()).set(t.orphans as f64);
    }
}

/// Minutes forwarded this month and allocated, per tenant, from the catalog and the config.
async fn record_minutes(catalog: &Catalog, config: &LiveConfig) {
    let allocations = crate::catalog::allocations_for(&config.get().tenants, crate::catalog::now_ms());
    let Ok(minutes) = catalog.run(move |c| c.minutes().status(&allocations)).await else {
        return;
    };
    for (tenant, m) in minutes {
        metrics::gauge!("dropsync_minutes_used", "tenant" => tenant.clone()).set(m.seconds_used as f64 / 60.0);
        // No allocation (one removed by a reload) is NaN, not its old value.
        let allocation = m.minute_allocation.map_or(f64::NAN, |a| a as f64);
        metrics::gauge!("dropsync_minute_allocation", "tenant" => tenant).set(allocation);
    }
}
