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
        promptTokens = registry.makeCounter(descriptor: Self.name("prompt_tokens", "total", "Prompt tokens prefilled."))
        completionTokens = registry.makeCounter(descriptor: Self.name("completion_tokens", "total", "Tokens generated."))
        activeSequences = registry.makeGauge(descriptor: Self.name("active_sequences", "", "Sequences being decoded."))
        queuedSequences = registry.makeGauge(descriptor: Self.name("queued_sequences", "", "Sequences waiting for a free slot."))
        cacheBytes = registry.makeGauge(descriptor: Self.name("cache", "bytes", "Bytes of decoder cache held by the active sequences."))
        stepBatchSize = registry.makeValueHistogram(
            descriptor: Self.name("step_batch_size", "", "Sequences advanced by each batched model step."),
            buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    }

    /// msgen_NAME_UNIT (an empty unit is left out).
    private static func name(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "msgen", metricName: name, unitName: unit, helpText: help)
    }

    /// Counts one answered request by its HTTP status.
    func request(status: Int) {
        registry.makeCounter(descriptor: Self.name("requests", "total", "HTTP requests answered, by status."), labels: [("status", String(status))])
            .increment()
    }

    func render() -> String { registry.emitToString() }
}
