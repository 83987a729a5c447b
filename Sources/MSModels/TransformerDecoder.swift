import MSFormat
import MSKernels

/// config.json of a transformer-decoder: the common keys, the layer count and the
/// number of learned positions (its context).
public struct TransformerConfig: Sendable, Equatable {
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
public final class TransformerDecoder: LanguageModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "transformer-decoder",
        describe: { "context \(try TransformerConfig($0).maxPositions) tokens (learned absolute positions)" },
        build: { try TransformerDecoder(TransformerConfig($0), $1) })

    public let configuration: TransformerConfig
    public var config: CommonConfig { configuration.common }
    public var canDecodePastContext: Bool { false }
    let D, H, dh, N: Int
    let scale: Float
    let embedding: Embedding
    let pos: Floats
    let layers: [Layer]
    let output: OutputHead

    struct Layer {
        let norm1: (weight: Floats, bias: Floats)
        let qkv: Linear          // [Wq; Wk; Wv]: one [3D, D] product
        let o: Linear
        let ffn: FeedForward
    }

    /// Builds the model from its tensors, checking that none is missing or left over.
    public convenience init(config c: TransformerConfig, tensors: [String: Tensor]) throws {
        let w = Weights(tensors, architecture: c.common.architecture)
        try self.init(c, w)
        try w.finish()
    }

    init(_ c: TransformerConfig, _ w: Weights) throws {
        configuration = c
        D = c.common.dModel; H = c.common.nHeads; dh = c.common.dHead; N = c.maxPositions
        scale = 1 / Float(dh).squareRoot()
        let D = D
        embedding = try Embedding(w, config: c.common)
        pos = try w.tensor("pos.weight", [N, D])
        layers = try (0..<c.nLayers).map { i in
            let p = "layers.\(i)."
            return try Layer(norm1: w.norm(p + "norm1", D), qkv: w.fused(["q", "k", "v"].map { p + "attn.\($0)_proj" }, out: D, in: D),
                         o: w.linear(p + "attn.o_proj", out: D, in: D), ffn: FeedForward(w, prefix: p, config: c.common))
        }
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
        // Activations, each written in full before it is read: not zeroed first.
        let h = Floats(count: T * D, zeroed: false), u = Floats(count: T * D, zeroed: false)
        let qkv = Floats(count: T * 3 * D, zeroed: false), a = Floats(count: T * D, zeroed: false)
        let f = Floats(count: T * config.dFF, zeroed: false)
        // Score rows of the causal attention, shared by every layer and head.
        let scratch = Floats(count: Kernels.causalScratch(keys: start + T), zeroed: false)
        embedding(tokens, into: h.p)
        for i in 0..<T { Kernels.add(pos.row(start + i, D), into: h.row(i, D), count: D) }
        for (li, l) in layers.enumerated() {
            let s = c.layers[li]
            Kernels.layerNorm(h.p, rows: T, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: config.normEps, into: u.p)
            l.qkv.apply(u.p, rows: T, into: qkv.p)
            for i in 0..<T { s.append(qkv.row(i, 3 * D), at: start + i) }
            for hd in 0..<H {
                Kernels.causalAttention(queries: qkv.p + hd * dh, queryStride: 3 * D, keys: s.k.p + hd * dh, keyStride: D,
                                        values: s.v.p + hd * dh, valueStride: D, start: start, count: T, headDim: dh,
                                        scale: scale, scratch: scratch.p, into: a.p + hd * dh, outStride: D)
            }
            l.o.apply(a.p, rows: T, into: h.p, accumulate: true)
            l.ffn.apply(h.p, rows: T, u: u.p, f: f.p)
        }
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
        let h = Floats(count: B * D, zeroed: false), u = Floats(count: B * D, zeroed: false)
        let qkv = Floats(count: B * 3 * D, zeroed: false), a = Floats(count: B * D, zeroed: false)
        let f = Floats(count: B * config.dFF, zeroed: false)
        embedding(tokens, into: h.p)
        for b in 0..<B { Kernels.add(pos.row(cs[b].position, D), into: h.row(b, D), count: D) }
        for (li, l) in layers.enumerated() {
            Kernels.layerNorm(h.p, rows: B, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: config.normEps, into: u.p)
            l.qkv.apply(u.p, rows: B, into: qkv.p)
            Kernels.parallelFor(B, minimum: 4) { range in
                let scores = Floats(count: N, zeroed: false)
                for b in range {
                    let s = cs[b].layers[li], p = cs[b].position
                    s.append(qkv.row(b, 3 * D), at: p)
                    for hd in 0..<H {
                        Kernels.attend(query: qkv.row(b, 3 * D) + hd * dh, keys: s.k.p + hd * dh, keyStride: D, values: s.v.p + hd * dh,
                                       valueStride: D, count: p + 1, headDim: dh, scale: scale, scores: scores.p, into: a.row(b, D) + hd * dh)
                    }
                }
            }
            l.o.apply(a.p, rows: B, into: h.p, accumulate: true)
            l.ffn.apply(h.p, rows: B, u: u.p, f: f.p)
        }
        for c in cs { c.position += 1 }
        return output.logits(h.p, rows: B)
    }
}

/// Keys and values of every token so far, per layer: memory grows with the context.
/// It holds state only; the model does the math.
final class KVCache: DecoderCache {
    var position = 0
    let layers: [LayerState]
    let D: Int

    final class LayerState {
        let k, v: Floats    // [N, D]; rows below the position are filled
        let D: Int
        init(N: Int, D: Int) {
            // Allocated lazily by the OS: untouched rows cost no memory.
            k = Floats(count: N * D, zeroed: false); v = Floats(count: N * D, zeroed: false); self.D = D
        }
        /// Stores the raw key and value of the token at `position` from its [q | k | v] row.
        func append(_ qkv: UnsafePointer<Float>, at position: Int) {
            k.row(position, D).update(from: qkv + D, count: D)
            v.row(position, D).update(from: qkv + 2 * D, count: D)
        }
    }

    init(_ m: TransformerDecoder) {
        D = m.D
        layers = (0..<m.configuration.nLayers).map { _ in LayerState(N: m.N, D: m.D) }
    }

    /// The keys and values held so far.
    var byteCount: Int { layers.count * 2 * position * D * 4 }

    /// The keys and values held, layer by layer, for tests comparing two caches.
    var state: [Float] {
        layers.flatMap { Array(UnsafeBufferPointer(start: $0.k.p, count: position * D)) + Array(UnsafeBufferPointer(start: $0.v.p, count: position * D)) }
    }
}
