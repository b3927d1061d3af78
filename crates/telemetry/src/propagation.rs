//! W3C trace context in message headers (Kafka) and request headers (HTTP), as plain string pairs
//! so no transport type crosses this boundary.

use opentelemetry::propagation::{Extractor, Injector};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Pairs<'a>(&'a mut Vec<(String, String)>);

impl Injector for Pairs<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct Lookup<'a>(&'a HashMap<String, String>);

impl Extractor for Lookup<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The `traceparent`/`tracestate` headers of the current span (empty when tracing is off).
pub fn current_trace_headers() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Pairs(&mut out)));
    out
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HashMap<String, String>) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Lookup(headers)));
    let _ = span.set_parent(cx);
}

/// Records OpenTelemetry context for spans on this thread, without exporting anything: for tests
/// that check trace propagation. Keep the guard alive for the test's duration.
pub fn propagation_test_guard() -> tracing::subscriber::DefaultGuard {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_default(subscriber)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn a_span_context_survives_a_trip_through_headers() {
        let _guard = propagation_test_guard();
        let producer = tracing::info_span!("producer");
        let headers: HashMap<String, String> = producer.in_scope(current_trace_headers).into_iter().collect();
        let traceparent = headers.get("traceparent").expect("traceparent injected");
        assert!(traceparent.starts_with("00-"), "{traceparent}");

        let consumer = tracing::info_span!("consumer");
        set_parent_from_headers(&consumer, &headers);
        assert_eq!(trace_id(&consumer), trace_id(&producer));
    }

    #[test]
    fn no_tracing_means_no_headers() {
        assert!(current_trace_headers().is_empty());
    }
}
