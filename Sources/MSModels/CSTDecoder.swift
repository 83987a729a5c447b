import MSFormat
import MSKernels

/// The causal Composite Slice Transformer of DESIGN.md §1.
///
/// Each layer: local attention inside the token's slice, left-extended by E tokens;
/// global attention of the slice over the summaries (mean local outputs) of the slices
/// before it; their sum through Wo; then the MLP. Positions enter only through the
/// query and key projections (MS-VIPE), and since projections are linear their positional
/// parts P·Wᵀ are computed once here, at load.
public final class CSTDecoder: LanguageModel, @unchecked Sendable {
    public let config: ModelConfig
    public var canDecodePastContext: Bool { true }
    let D, H, dh, L, E, G, V: Int
    let scale: Float
    let io: EmbeddingAndHead
    let layers: [Layer]

    struct Layer {
        let norm1w, norm1b: Floats
        let wqkv, bqkv: Floats      // Wq, Wk, Wv stacked: one [3D, D] projection
        let wgqkv, bgqkv: Floats    // the global ones (the same storage when shared)
        let wo, bo: Floats
        let ffn: FeedForward
        let plQ, plK: Floats        // P_l·Wqᵀ, P_l·Wkᵀ   [E+L, D]
        let pgQ, pgK: Floats        // P_g·Wgqᵀ, P_g·Wgkᵀ [G, D]
    }

    public init(config c: ModelConfig, tensors: [String: Tensor]) throws {
        try check(c.architecture == .cstDecoder, "not a cst-decoder config")
        var shapes: [String: (dtype: DType, shape: [Int])] = [:]
        for (k, t) in tensors { shapes[k] = (t.dtype, t.shape) }
        try c.validate(shapes)
        config = c
        D = c.dModel; H = c.nHeads; dh = c.dHead; L = c.sliceLength; E = c.leftExtension; G = c.maxSlices; V = c.vocabSize
        scale = 1 / Float(c.dHead).squareRoot()
        let w = WeightSource(tensors: tensors)
        io = try EmbeddingAndHead(w, config: c)
        let pl = try w("pos_local.weight"), pg = try w("pos_global.weight")
        let (D, E, L, G) = (D, E, L, G)
        layers = try (0..<c.nLayers).map { i in
            let p = "layers.\(i)."
            let qkv = ["q", "k", "v"].map { p + "attn.\($0)_proj" }
            let gqkv = c.sharedLocalGlobal ? qkv : ["gq", "gk", "gv"].map { p + "attn.\($0)_proj" }
            let wqkv = try w.stacked(qkv.map { $0 + ".weight" }), bqkv = try w.stacked(qkv.map { $0 + ".bias" })
            let wg = c.sharedLocalGlobal ? wqkv : try w.stacked(gqkv.map { $0 + ".weight" })
            let bg = c.sharedLocalGlobal ? bqkv : try w.stacked(gqkv.map { $0 + ".bias" })
            // Positional parts of the projections, without bias: (u + P)·Wᵀ + b = u·Wᵀ + b + P·Wᵀ.
            func project(_ table: Floats, rows: Int, _ weight: UnsafeMutablePointer<Float>) -> Floats {
                let out = Floats(count: rows * D)
                Kernels.linear(table.p, rows: rows, in: D, weight: weight, out: D, bias: nil, into: out.p)
                return out
            }
            return Layer(
                norm1w: try w(p + "norm1.weight"), norm1b: try w(p + "norm1.bias"),
                wqkv: wqkv, bqkv: bqkv, wgqkv: wg, bgqkv: bg,
                wo: try w(p + "attn.o_proj.weight"), bo: try w(p + "attn.o_proj.bias"),
                ffn: try FeedForward(w, prefix: p, config: c),
                plQ: project(pl, rows: E + L, wqkv.p), plK: project(pl, rows: E + L, wqkv.p + D * D),
                pgQ: project(pg, rows: G, wg.p), pgK: project(pg, rows: G, wg.p + D * D))
        }
    }

    public func makeCache() -> DecoderCache { CSTCache(self) }

    // MARK: - Global attention over slice summaries

    /// The global output for the slice that follows `count` summaries: its query is the
    /// last summary, its keys all of them, each with the P_g row of its index. `rows` are
    /// the summaries' projections [gq | gk | gv] (3D wide).
    func globalAttention(_ l: Layer, rows: UnsafePointer<Float>, count c: Int, keys: UnsafeMutablePointer<Float>,
                         scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        guard c > 0 else { out.update(repeating: 0, count: D); return }
        let q = keys + c * D  // scratch past the keys
        Kernels.sum(rows + (c - 1) * 3 * D, l.pgQ.row(c - 1, D), into: q, count: D)
        for s in 0..<c { Kernels.sum(rows + s * 3 * D + D, l.pgK.row(s, D), into: keys + s * D, count: D) }
        for h in 0..<H {
            Kernels.attend(query: q + h * dh, keys: keys + h * dh, keyStride: D, values: rows + 2 * D + h * dh,
                           valueStride: 3 * D, count: c, headDim: dh, scale: scale, scores: scores, into: out + h * dh)
        }
    }

    // MARK: - Batched forward (prefill and scoring)

    /// Runs tokens 0..<T (T ≤ context) from an empty cache in one pass, matrix by matrix,
    /// and leaves in `cache` the state that decoding them one by one would have left.
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        let cache = cache as! CSTCache
        let T = tokens.count
        try check(cache.position == 0, "prefill needs an empty cache")
        try check(T <= config.context, "the prompt has \(T) tokens; this model's context is \(config.context)")
        try check(tokens.allSatisfy { $0 >= 0 && $0 < V }, "token id out of range for a vocabulary of \(V)")
        guard T > 0 else { return [] }
        let S = T / L                         // complete slices
        let slices = (T + L - 1) / L          // slices with tokens
        let W = E + L                         // the longest local window

        // Activations, each written in full before it is read: not zeroed first.
        let h = Floats(count: T * D, zeroed: false), u = Floats(count: T * D, zeroed: false)
        let qkv = Floats(count: T * 3 * D, zeroed: false), a = Floats(count: T * D, zeroed: false)
        let g = Floats(count: slices * D), f = Floats(count: T * config.dFF, zeroed: false)
        let m = Floats(count: max(S, 1) * D), gqkv = Floats(count: max(S, 1) * 3 * D)
        let keys = Floats(count: (max(W, G) + 1) * D), scores = Floats(count: max(W, G))
        io.embed(tokens, into: h.p)

        for (li, l) in layers.enumerated() {
            Kernels.layerNorm(h.p, rows: T, dim: D, weight: l.norm1w.p, bias: l.norm1b.p, eps: config.normEps, into: u.p)
            Kernels.linear(u.p, rows: T, in: D, weight: l.wqkv.p, out: 3 * D, bias: l.bqkv.p, into: qkv.p)

            // Local attention, slice by slice (slices split over the threads): the window's
            // keys and the slice's queries with their P_l rows, then per head the causal
            // attention of the slice's queries (window positions E… of the slice's first
            // token) over the window, as two small matrix products.
            Kernels.parallelFor(slices, minimum: 4) { range in
                let keys = Floats(count: W * D), q = Floats(count: L * D), scratch = Floats(count: L * W)
                for t in range {
                    let start = max(0, t * L - E), end = min(T, t * L + L)
                    for j in start..<end { Kernels.sum(qkv.row(j, 3 * D) + D, l.plK.row(E + j - t * L, D), into: keys.row(j - start, D), count: D) }
                    for i in (t * L)..<end { Kernels.sum(qkv.row(i, 3 * D), l.plQ.row(E + i - t * L, D), into: q.row(i - t * L, D), count: D) }
                    for hd in 0..<H {
                        Kernels.causalAttention(queries: q.p + hd * dh, queryStride: D, keys: keys.p + hd * dh, keyStride: D,
                                                values: qkv.row(start, 3 * D) + 2 * D + hd * dh, valueStride: 3 * D,
                                                start: t * L - start, count: end - t * L, headDim: dh, scale: scale,
                                                scratch: scratch.p, into: a.row(t * L, D) + hd * dh, outStride: D)
                    }
                }
            }
            // Summaries of complete slices and their global projections.
            for s in 0..<S { meanRows(a.row(s * L, D), into: m.row(s, D)) }
            if S > 0 { Kernels.linear(m.p, rows: S, in: D, weight: l.wgqkv.p, out: 3 * D, bias: l.bgqkv.p, into: gqkv.p) }
            for t in 0..<slices {
                globalAttention(l, rows: gqkv.p, count: t, keys: keys.p, scores: scores.p, into: g.row(t, D))
            }
            // The state token-by-token decoding would hold after these T tokens.
            cache.store(layer: li, rawKV: qkv.p, a: a.p, summaries: gqkv.p, tokens: T, model: self)

            // Compose: h += (a + g_slice)·Woᵀ + bo, then the MLP.
            for i in 0..<T { Kernels.add(g.row(i / L, D), into: a.row(i, D), count: D) }
            Kernels.linear(a.p, rows: T, in: D, weight: l.wo.p, out: D, bias: l.bo.p, into: h.p, accumulate: true)
            l.ffn.apply(h.p, rows: T, u: u.p, f: f.p)
        }
        cache.position = T
        let rows = logitsFor.clamped(to: 0..<T)
        return io.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    func meanRows(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        out.update(repeating: 0, count: D)
        for r in 0..<L { Kernels.add(x + r * D, into: out, count: D) }
        let inv = 1 / Float(L)
        for i in 0..<D { out[i] *= inv }
    }

    // MARK: - One token

    public func step(_ token: Int, cache: DecoderCache) -> [Float] {
        let c = cache as! CSTCache
        let p = c.position, r = p % L, W = E + L
        let h = c.h.p, u = c.u.p, qkv = c.qkv.p, a = c.a.p
        io.embed([token], into: h)
        // The keys this token sees: the slice's first token minus E, clipped at token 0.
        let first = max(0, p - r - E), n = p - first + 1
        for (li, l) in layers.enumerated() {
            let s = c.layers[li]
            Kernels.layerNorm(h, rows: 1, dim: D, weight: l.norm1w.p, bias: l.norm1b.p, eps: config.normEps, into: u)
            Kernels.linear(u, rows: 1, in: D, weight: l.wqkv.p, out: 3 * D, bias: l.bqkv.p, into: qkv)
            s.k.row(p % W, D).update(from: qkv + D, count: D)
            s.v.row(p % W, D).update(from: qkv + 2 * D, count: D)
            Kernels.sum(qkv, l.plQ.row(E + r, D), into: c.q.p, count: D)
            for j in first...p {
                Kernels.sum(s.k.row(j % W, D), l.plK.row(E + j - (p - r), D), into: c.keys.row(j - first, D), count: D)
                c.values.row(j - first, D).update(from: s.v.row(j % W, D), count: D)
            }
            for hd in 0..<H {
                Kernels.attend(query: c.q.p + hd * dh, keys: c.keys.p + hd * dh, keyStride: D, values: c.values.p + hd * dh,
                               valueStride: D, count: n, headDim: dh, scale: scale, scores: c.scores.p, into: a + hd * dh)
            }
            Kernels.add(a, into: s.sliceSum.p, count: D)
            Kernels.add(s.g.p, into: a, count: D)
            Kernels.linear(a, rows: 1, in: D, weight: l.wo.p, out: D, bias: l.bo.p, into: h, accumulate: true)
            l.ffn.apply(h, rows: 1, u: u, f: c.f.p)
            if r == L - 1 { c.completeSlice(layer: li, model: self) }
        }
        c.position += 1
        return io.logits(h, rows: 1)
    }
}

/// The bounded per-sequence state of DESIGN §1: per layer, the raw keys and values of the
/// last E+L tokens (a ring), the running sum of the current slice's local outputs, the
/// [gq | gk | gv] projections of the last G−1 slice summaries, and the current slice's
/// global output. Its size does not depend on how many tokens have gone through.
final class CSTCache: DecoderCache {
    var position = 0
    let layers: [LayerState]
    let D: Int, W: Int, capacity: Int
    // Scratch for one step.
    let h, u, qkv, a, q, f, keys, values, scores: Floats

    final class LayerState {
        let k, v: Floats            // ring of raw keys/values, row p mod (E+L)
        let sliceSum: Floats        // Σ a over the current slice
        let summaries: Floats       // [gq | gk | gv] of kept summaries, oldest first
        var count = 0               // kept summaries (≤ G−1)
        let g: Floats               // the current slice's global output
        init(D: Int, W: Int, capacity: Int) {
            k = Floats(count: W * D); v = Floats(count: W * D); sliceSum = Floats(count: D)
            summaries = Floats(count: max(capacity, 1) * 3 * D); g = Floats(count: D)
        }
    }

    init(_ m: CSTDecoder) {
        D = m.D; W = m.E + m.L; capacity = m.G - 1
        layers = (0..<m.config.nLayers).map { _ in LayerState(D: m.D, W: m.E + m.L, capacity: m.G - 1) }
        h = Floats(count: D); u = Floats(count: D); qkv = Floats(count: 3 * D); a = Floats(count: D); q = Floats(count: D)
        f = Floats(count: m.config.dFF); keys = Floats(count: (max(W, m.G) + 1) * D); values = Floats(count: W * D)
        scores = Floats(count: max(W, m.G))
    }

    var byteCount: Int {
        let perLayer = (2 * W * D + D + max(capacity, 1) * 3 * D + D) * 4
        return layers.count * perLayer
    }

    /// Appends a summary's projections, dropping the oldest when G−1 are kept: past the
    /// context the kept summaries are re-indexed 0…G−2 simply by their place in this list.
    func push(_ s: LayerState, _ row: UnsafePointer<Float>) {
        guard capacity > 0 else { return }
        if s.count == capacity {
            s.summaries.p.update(from: s.summaries.p + 3 * D, count: (capacity - 1) * 3 * D)
            s.count -= 1
        }
        s.summaries.row(s.count, 3 * D).update(from: row, count: 3 * D)
        s.count += 1
    }

    /// The current slice is complete in this layer: finalise its summary m, project it,
    /// and compute the global output that every token of the next slice adds.
    func completeSlice(layer li: Int, model m: CSTDecoder) {
        let s = layers[li], l = m.layers[li]
        m.meanRowsOfSum(s.sliceSum.p, into: a.p)
        s.sliceSum.zero()
        Kernels.linear(a.p, rows: 1, in: D, weight: l.wgqkv.p, out: 3 * D, bias: l.bgqkv.p, into: qkv.p)
        push(s, qkv.p)
        m.globalAttention(l, rows: s.summaries.p, count: s.count, keys: keys.p, scores: scores.p, into: s.g.p)
    }

    /// Sets one layer's state from a batched pass over T tokens from position 0.
    func store(layer li: Int, rawKV: UnsafePointer<Float>, a: UnsafePointer<Float>, summaries: UnsafePointer<Float>,
               tokens T: Int, model m: CSTDecoder) {
        let s = layers[li], L = m.L
        for j in max(0, T - W)..<T {
            s.k.row(j % W, D).update(from: rawKV + j * 3 * D + D, count: D)
            s.v.row(j % W, D).update(from: rawKV + j * 3 * D + 2 * D, count: D)
        }
        s.sliceSum.zero()
        for i in (T / L * L)..<T { Kernels.add(a + i * D, into: s.sliceSum.p, count: D) }
        s.count = 0
        for t in max(0, T / L - max(capacity, 0))..<(T / L) { push(s, summaries + t * 3 * D) }
        m.globalAttention(m.layers[li], rows: s.summaries.p, count: s.count, keys: keys.p, scores: scores.p, into: s.g.p)
    }
}

extension CSTDecoder {
    func meanRowsOfSum(_ sum: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let inv = 1 / Float(L)
        for i in 0..<D { out[i] = sum[i] * inv }
    }
}
