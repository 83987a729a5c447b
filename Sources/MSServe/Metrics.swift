import Prometheus

/// What GET /metrics reports (Prometheus text format). Each server has its own registry,
/// so that several servers in one process (the tests) do not mix their counts.
final class ServeMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let promptTokens: Counter
    let completionTokens: Counter
    let activeSequences: Gauge
    let queuedSequences: Gauge
    let cacheBytes: Gauge
    let stepBatchSize: ValueHistogram

    init() {
        promptTokens = registry.makeCounter(name: "msgen_prompt_tokens_total", help: "Prompt tokens prefilled.")
        completionTokens = registry.makeCounter(name: "msgen_completion_tokens_total", help: "Tokens generated.")
        activeSequences = registry.makeGauge(name: "msgen_active_sequences", help: "Sequences being decoded.")
        queuedSequences = registry.makeGauge(name: "msgen_queued_sequences", help: "Sequences waiting for a free slot.")
        cacheBytes = registry.makeGauge(name: "msgen_cache_bytes", help: "Bytes of decoder cache held by the active sequences.")
        stepBatchSize = registry.makeValueHistogram(
            name: "msgen_step_batch_size", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
            help: "Sequences advanced by each batched model step.")
    }

    /// Counts one answered request by its HTTP status.
    func request(status: Int) {
        registry.makeCounter(name: "msgen_requests_total", labels: [("status", String(status))], help: "HTTP requests answered, by status.")
            .increment()
    }

    func render() -> String { registry.emitToString() }
}
