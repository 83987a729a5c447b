import MSFormat
import MSKernels

/// The baseline of DESIGN.md §2: a GPT-2 style pre-norm decoder with learned absolute
/// positions and full causal attention over a KV cache that grows with every token.
/// It is here to measure CST against, side by side, and to run GPT-2 checkpoints.
public final class TransformerDecoder: LanguageModel, @unchecked Sendable {
    public let config: ModelConfig
    public var canDecodePastContext: Bool { false }
    let D, H, dh, N, V: Int
    let scale: Float
    let io: EmbeddingAndHead
    let pos: Floats
    let layers: [Layer]

    struct Layer {
        let norm1w, norm1b, wqkv, bqkv, wo, bo: Floats
        let ffn: FeedForward
    }

    public init(config c: ModelConfig, tensors: [String: Tensor]) throws {
        try check(c.architecture == .transformerDecoder, "not a transformer-decoder config")
        var shapes: [String: (dtype: DType, shape: [Int])] = [:]
        for (k, t) in tensors { shapes[k] = (t.dtype, t.shape) }
        try c.validate(shapes)
        config = c
        D = c.dModel; H = c.nHeads; dh = c.dHead; N = c.maxPositions; V = c.vocabSize
        scale = 1 / Float(c.dHead).squareRoot()
        let w = WeightSource(tensors: tensors)
        io = try EmbeddingAndHead(w, config: c)
        pos = try w("pos.weight")
        layers = try (0..<c.nLayers).map { i in
            let p = "layers.\(i)."
            let qkv = ["q", "k", "v"].map { p + "attn.\($0)_proj" }
            return Layer(norm1w: try w(p + "norm1.weight"), norm1b: try w(p + "norm1.bias"),
                         wqkv: try w.stacked(qkv.map { $0 + ".weight" }), bqkv: try w.stacked(qkv.map { $0 + ".bias" }),
                         wo: try w(p + "attn.o_proj.weight"), bo: try w(p + "attn.o_proj.bias"),
                         ffn: try FeedForward(w, prefix: p, config: c))
        }
    }

    public func makeCache() -> DecoderCache { KVCache(self) }

    /// h[i] = embed[x_i] + pos[start + i].
    func embed(_ tokens: [Int], start: Int, into h: UnsafeMutablePointer<Float>) {
        io.embed(tokens, into: h)
        for i in tokens.indices { Kernels.add(pos.row(start + i, D), into: h + i * D, count: D) }
    }

    /// Runs `T` new tokens (rows of h) through every layer, appending their keys and
    /// values to the cache; token i attends to every cached token and to new tokens ≤ i.
    func forward(_ h: UnsafeMutablePointer<Float>, rows T: Int, cache c: KVCache, u: Floats, qkv: Floats, a: Floats, f: Floats) {
        let start = c.position
        // Score rows of the causal attention over several tokens, shared by every layer and head.
        let scratch = T > 1 ? Floats(count: Kernels.causalScratch(keys: start + T), zeroed: false) : nil
        for (li, l) in layers.enumerated() {
            let s = c.layers[li]
            Kernels.layerNorm(h, rows: T, dim: D, weight: l.norm1w.p, bias: l.norm1b.p, eps: config.normEps, into: u.p)
            Kernels.linear(u.p, rows: T, in: D, weight: l.wqkv.p, out: 3 * D, bias: l.bqkv.p, into: qkv.p)
            for i in 0..<T {
                s.k.row(start + i, D).update(from: qkv.row(i, 3 * D) + D, count: D)
                s.v.row(start + i, D).update(from: qkv.row(i, 3 * D) + 2 * D, count: D)
            }
            if let scratch {
                for hd in 0..<H {
                    Kernels.causalAttention(queries: qkv.p + hd * dh, queryStride: 3 * D, keys: s.k.p + hd * dh, keyStride: D,
                                            values: s.v.p + hd * dh, valueStride: D, start: start, count: T, headDim: dh,
                                            scale: scale, scratch: scratch.p, into: a.p + hd * dh, outStride: D)
                }
            } else {  // one token: one query per head
                for hd in 0..<H {
                    Kernels.attend(query: qkv.p + hd * dh, keys: s.k.p + hd * dh, keyStride: D, values: s.v.p + hd * dh,
                                   valueStride: D, count: start + 1, headDim: dh, scale: scale, scores: c.scores.p, into: a.p + hd * dh)
                }
            }
            Kernels.linear(a.p, rows: T, in: D, weight: l.wo.p, out: D, bias: l.bo.p, into: h, accumulate: true)
            l.ffn.apply(h, rows: T, u: u.p, f: f.p)
        }
        c.position += T
    }

    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        let c = cache as! KVCache
        let T = tokens.count
        try check(c.position == 0, "prefill needs an empty cache")
        try check(T <= N, "the prompt has \(T) tokens; this model's context is \(N)")
        try check(tokens.allSatisfy { $0 >= 0 && $0 < V }, "token id out of range for a vocabulary of \(V)")
        guard T > 0 else { return [] }
        // Activations, each written in full before it is read: not zeroed first.
        let h = Floats(count: T * D, zeroed: false)
        embed(tokens, start: 0, into: h.p)
        forward(h.p, rows: T, cache: c, u: Floats(count: T * D, zeroed: false), qkv: Floats(count: T * 3 * D, zeroed: false),
                a: Floats(count: T * D, zeroed: false), f: Floats(count: T * config.dFF, zeroed: false))
        let rows = logitsFor.clamped(to: 0..<T)
        return io.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    public func step(_ token: Int, cache: DecoderCache) -> [Float] {
        let c = cache as! KVCache
        precondition(c.position < N, "the baseline cannot decode past its context")
        embed([token], start: c.position, into: c.h.p)
        forward(c.h.p, rows: 1, cache: c, u: c.u, qkv: c.qkv, a: c.a, f: c.f)
        return io.logits(c.h.p, rows: 1)
    }
}

/// Keys and values of every token so far, per layer: memory grows with the context.
final class KVCache: DecoderCache {
    var position = 0
    let layers: [(k: Floats, v: Floats)]
    let D: Int
    let h, u, qkv, a, f, scores: Floats

    init(_ m: TransformerDecoder) {
        D = m.D
        // Allocated lazily by the OS: untouched rows cost no memory.
        layers = (0..<m.config.nLayers).map { _ in (Floats(count: m.N * m.D, zeroed: false), Floats(count: m.N * m.D, zeroed: false)) }
        h = Floats(count: D); u = Floats(count: D); qkv = Floats(count: 3 * D); a = Floats(count: D)
        f = Floats(count: m.config.dFF); scores = Floats(count: m.N)
    }

    /// The keys and values held so far.
    var byteCount: Int { layers.count * 2 * position * D * 4 }
}
