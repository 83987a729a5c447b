import MSFormat
import MSKernels

/// config.json of a transformer-decoder: the common keys, the layer count and the
/// number of learned positions (its context).
public struct TransformerConfig: ArchitectureConfig, Equatable {
    public var common: CommonConfig
    public var nLayers: Int
    public var maxPositions: Int

    public init(_ r: ConfigReader) throws {
        common = try CommonConfig(r, architecture: "transformer-decoder")
        nLayers = try r.int("n_layers")
        maxPositions = try r.int("max_positions")
        common.context = maxPositions
    }
}

/// The baseline (README.md beside this file, "Baseline decoder"): a GPT-2 style
/// pre-norm decoder with learned absolute positions and full causal attention over a KV
/// cache that grows with every token. It is here to measure CST against, side by side,
/// and to run GPT-2 checkpoints.
public final class TransformerDecoder: LanguageModel, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "transformer-decoder",
        describe: { "context \(try TransformerConfig($0).maxPositions) tokens (learned absolute positions)" },
        build: { try TransformerDecoder(TransformerConfig($0), $1) })

    public let configuration: TransformerConfig
    public var config: CommonConfig { configuration.common }
    public var canDecodePastContext: Bool { false }
    let D, N: Int
    let embedding: Embedding
    let pos: Floats
    /// The pre-norm GPT-2 blocks (DecoderParts.swift), `layers.{i}.`.
    let stack: BlockStack
    let output: OutputHead

    public init(_ c: TransformerConfig, _ w: Weights) throws {
        configuration = c
        D = c.common.dModel; N = c.maxPositions
        embedding = try Embedding(w, config: c.common)
        pos = try w.tensor("pos.weight", [N, D])
        stack = try BlockStack(w, prefix: "layers.", count: c.nLayers, config: c.common)
        output = try OutputHead(w, config: c.common, embedding: embedding)
    }

    public func makeCache() -> DecoderCache { KVCache(self) }

    /// Runs T new tokens of one sequence, after the cache's position, in one pass: token i
    /// attends to every cached token and to the new tokens up to itself.
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        let c = own(cache, as: KVCache.self)
        try checkPrefill(tokens, at: c.position)
        let T = tokens.count, start = c.position, D = D
        guard T > 0 else { return [] }
        let h = Floats(count: T * D, zeroed: false)
        embedding(tokens, into: h.p)
        for i in 0..<T { Kernels.add(pos.row(start + i, D), into: h.row(i, D), count: D) }
        stack.forward(h.p, rows: T, start: start, state: c.layers)
        c.position += T
        let rows = logitsFor.clamped(to: 0..<T)
        return output.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    /// One token of each of several sequences: the projections and the MLP over the batch,
    /// attention per sequence over its own cache.
    public func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        let B = tokens.count, D = D
        precondition(caches.count == B, "step: \(B) tokens for \(caches.count) caches")
        precondition(tokens.allSatisfy { $0 >= 0 && $0 < config.vocabSize }, "step: token id out of range")
        let cs = caches.map { own($0, as: KVCache.self) }
        precondition(cs.allSatisfy { $0.position < N }, "the baseline cannot decode past its context")
        let h = Floats(count: B * D, zeroed: false)
        embedding(tokens, into: h.p)
        for b in 0..<B { Kernels.add(pos.row(cs[b].position, D), into: h.row(b, D), count: D) }
        stack.step(h.p, positions: cs.map(\.position), states: cs.map(\.layers))
        for c in cs { c.position += 1 }
        return output.logits(h.p, rows: B)
    }
}

/// Keys and values of every token so far, per layer: memory grows with the context.
/// It holds state only; the model does the math.
final class KVCache: DecoderCache {
    var position = 0
    let layers: [KVRows]
    let D: Int

    init(_ m: TransformerDecoder) {
        D = m.D
        layers = m.stack.makeState(capacity: m.N)
    }

    /// The keys and values held so far.
    var byteCount: Int { layers.count * 2 * position * D * 4 }

    /// The keys and values held, layer by layer, for tests comparing two caches.
    var state: [Float] { layers.flatMap { $0.state(rows: position) } }
}
