import MSKernels

/// The local attention of CST (§1) that the retina decoder (§8 c) shares: each token
/// attends, causally, to the tokens of its slice left-extended by E, with the P_l row of
/// its place in the window added to its query and to every key. Positions are linear in
/// the projections, so their parts P_l·Wqᵀ and P_l·Wkᵀ are computed once, at load; the
/// cache keeps the last E+L tokens' raw keys and values in a ring (row p mod (E+L)).
struct LocalAttention: @unchecked Sendable {
    let D, H, dh, L, E: Int
    let scale: Float
    let plQ, plK: Floats  // P_l·Wqᵀ, P_l·Wkᵀ   [E+L, D]
    /// The longest window, E + L: also the length of the key/value ring.
    var W: Int { E + L }

    /// `qkv` is the layer's fused [Wq; Wk; Wv]; `pl` the P_l table [E+L, D].
    init(qkv: Linear, positions pl: Floats, config c: CommonConfig, sliceLength: Int, leftExtension: Int) {
        D = c.dModel; H = c.nHeads; dh = c.dHead; L = sliceLength; E = leftExtension
        scale = 1 / Float(dh).squareRoot()
        plQ = qkv.rows(0..<D).withoutBias(pl.p, rows: E + L)
        plK = qkv.rows(D..<(2 * D)).withoutBias(pl.p, rows: E + L)
    }

    /// T tokens after position p0 (their raw q, k, v in `qkv`, rows of 3D), slice by slice
    /// (split over the threads): the window's keys with their P_l rows, the slice's queries
    /// with theirs, then per head the causal attention of the queries over the window as
    /// two small matrix products. Keys before p0 come from the ring; values are used in
    /// place when all are new. Then the ring takes the raw keys and values of the last W.
    func chunk(_ qkv: Floats, from p0: Int, count T: Int, ringK: Floats, ringV: Floats, into a: Floats) {
        let (D, L, E, W) = (D, L, E, W)
        let first = p0 / L, last = (p0 + T - 1) / L
        Kernels.parallelFor(last - first + 1, minimum: 4) { range in
            let wk = Floats(count: W * D), wv = Floats(count: W * D), q = Floats(count: L * D), scratch = Floats(count: L * W)
            for t in range.map({ $0 + first }) {
                let ws = max(0, t * L - E), qs = max(p0, t * L), we = min(p0 + T, t * L + L)
                let fromRing = ws < p0
                for j in ws..<we {
                    let raw =
                        j < p0 ? (k: ringK.row(j % W, D), v: ringV.row(j % W, D)) : (k: qkv.row(j - p0, 3 * D) + D, v: qkv.row(j - p0, 3 * D) + 2 * D)
                    Kernels.sum(raw.k, plK.row(E + j - t * L, D), into: wk.row(j - ws, D), count: D)
                    if fromRing { wv.row(j - ws, D).update(from: raw.v, count: D) }
                }
                for i in qs..<we { Kernels.sum(qkv.row(i - p0, 3 * D), plQ.row(E + i - t * L, D), into: q.row(i - qs, D), count: D) }
                let values = fromRing ? (wv.p, D) : (qkv.row(ws - p0, 3 * D) + 2 * D, 3 * D)
                for hd in 0..<H {
                    Kernels.causalAttention(
                        queries: q.p + hd * dh, queryStride: D, keys: wk.p + hd * dh, keyStride: D,
                        values: values.0 + hd * dh, valueStride: values.1, start: qs - ws, count: we - qs,
                        headDim: dh, scale: scale, scratch: scratch.p, into: a.row(qs - p0, D) + hd * dh, outStride: D)
                }
            }
        }
        for j in max(p0, p0 + T - W)..<(p0 + T) {
            ringK.row(j % W, D).update(from: qkv.row(j - p0, 3 * D) + D, count: D)
            ringV.row(j % W, D).update(from: qkv.row(j - p0, 3 * D) + 2 * D, count: D)
        }
    }

    /// The token at `position` (its raw q, k, v in `qkv`), after writing its key and value
    /// into the ring: over the tokens from its slice's start less E (clipped at token 0)
    /// to itself, all of which the ring holds, each key with its P_l row added as it is
    /// read. `query` holds D floats of scratch, `scores` H·W.
    func token(
        _ qkv: UnsafePointer<Float>, position p: Int, ringK: Floats, ringV: Floats, query: UnsafeMutablePointer<Float>,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        let r = p % L, first = max(0, p - r - E), n = p - first + 1
        ringK.row(p % W, D).update(from: qkv + D, count: D)
        ringV.row(p % W, D).update(from: qkv + 2 * D, count: D)
        Kernels.sum(qkv, plQ.row(E + r, D), into: query, count: D)
        Kernels.attendRing(
            query: query, keys: ringK.p, values: ringV.p, stride: D, ring: W, first: first % W, count: n,
            keyAdd: plK.row(E + first - (p - r), D), keyAddStride: D, heads: H, headDim: dh, scale: scale, scores: scores,
            into: out)
    }
}

/// The parts of a slice decoder's layer (CST, retina) that both load and use the same way:
/// everything but the positional parts of their global attention.
struct SliceLayerParts {
    let norm1: (weight: Floats, bias: Floats)
    let qkv: Linear  // [Wq; Wk; Wv]: one [3D, D] product
    let o: Linear
    let globalQKV: Linear  // [Wgq; Wgk; Wgv], the same as qkv when shared
    let ffn: FeedForward
    let local: LocalAttention  // with P_l·Wqᵀ, P_l·Wkᵀ

    /// Layer i's tensors (`layers.{i}.`), with the P_l table `pl` [E+L, D].
    init(
        _ w: Weights, layer i: Int, config c: CommonConfig, sharedLocalGlobal: Bool, localPositions pl: Floats, sliceLength L: Int,
        leftExtension E: Int
    )
        throws
    {
        let p = "layers.\(i).", D = c.dModel
        norm1 = try w.norm(p + "norm1", D)
        qkv = try w.fused(["q", "k", "v"].map { p + "attn.\($0)_proj" }, out: D, in: D)
        o = try w.linear(p + "attn.o_proj", out: D, in: D)
        globalQKV = try sharedLocalGlobal ? qkv : w.fused(["gq", "gk", "gv"].map { p + "attn.\($0)_proj" }, out: D, in: D)
        ffn = try FeedForward(w, prefix: p, config: c)
        local = LocalAttention(qkv: qkv, positions: pl, config: c, sliceLength: L, leftExtension: E)
    }
}

/// What the batched step of a slice decoder reads of one of its layers: the shared parts
/// (each model's layer adds the positional parts of its global attention).
protocol SliceLayer {
    var parts: SliceLayerParts { get }
}

extension SliceLayer {
    var norm1: (weight: Floats, bias: Floats) { parts.norm1 }
    var qkv: Linear { parts.qkv }
    var local: LocalAttention { parts.local }
    var o: Linear { parts.o }
    var globalQKV: Linear { parts.globalQKV }
    var ffn: FeedForward { parts.ffn }
}

/// What it reads and writes of one layer's cache state.
protocol SliceState: AnyObject {
    var k: Floats { get }
    var v: Floats { get }
    /// Σ a over the current slice.
    var sliceSum: Floats { get }
    /// The current slice's global output.
    var g: Floats { get }
}

/// A slice decoder's per-sequence cache, as the batched step sees it.
protocol SliceCache: DecoderCache {
    associatedtype State: SliceState
    var position: Int { get set }
    var layers: [State] { get }
}

/// A decoder built of slices (CST and retina): local attention inside the slice, then a
/// global part over summaries of earlier slices. The two share everything but that global
/// part, which is `completeSlice`: the layer's state takes a completed slice's summary m
/// (the mean of its local outputs) and its projections [gq | gk | gv], and leaves in the
/// state's g the global output of the slice that follows.
protocol SliceDecoder: LanguageModel {
    associatedtype Layer: SliceLayer
    associatedtype Cache: SliceCache
    var embedding: Embedding { get }
    var layers: [Layer] { get }
    var output: OutputHead { get }
    func completeSlice(_ l: Layer, _ s: Cache.State, slice: Int, summary: UnsafePointer<Float>, projections: UnsafePointer<Float>)
}

extension SliceDecoder {
    /// T tokens after the cache's position p in one pass, matrix by matrix: local attention
    /// slice by slice (keys before p from the ring); the slice sums, whose complete slices
    /// give summaries (their projections in one product); slice by slice, each slice's g
    /// is the one the slice before it left, and a completed slice leaves the next one's.
    /// Leaves the state decoding one by one would.
    func slicePrefill(_ tokens: [Int], cache: Cache, logitsFor: Range<Int>) throws -> [Float] {
        let c = cache
        try checkPrefill(tokens, at: c.position)
        let T = tokens.count, p0 = c.position, D = config.dModel
        guard T > 0, let L = layers.first?.local.L else { return [] }
        let first = p0 / L, last = (p0 + T - 1) / L  // the slices this chunk touches
        let completed = (p0 + T) / L - first  // of which the chunk completes
        // Activations, each written in full before it is read: not zeroed first.
        let h = Floats(count: T * D, zeroed: false), u = Floats(count: T * D, zeroed: false)
        let qkv = Floats(count: T * 3 * D, zeroed: false), a = Floats(count: T * D, zeroed: false)
        let f = Floats(count: T * config.dFF, zeroed: false), g = Floats(count: (last - first + 1) * D, zeroed: false)
        let m = Floats(count: max(completed, 1) * D), acc = Floats(count: D)
        embedding(tokens, into: h.p)

        for (li, l) in layers.enumerated() {
            let s = c.layers[li]
            Kernels.layerNorm(h.p, rows: T, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: config.normEps, into: u.p)
            l.qkv.apply(u.p, rows: T, into: qkv.p)
            l.local.chunk(qkv, from: p0, count: T, ringK: s.k, ringV: s.v, into: a)

            // Slice sums: a complete slice gives its summary m = mean of its a; the sum of
            // an incomplete one stays in the cache (the first slice's earlier tokens are
            // already in it).
            var done = 0
            for t in first...last {
                if t == first { acc.p.update(from: s.sliceSum.p, count: D) } else { acc.zero() }
                for i in max(p0, t * L)..<min(p0 + T, t * L + L) { Kernels.add(a.row(i - p0, D), into: acc.p, count: D) }
                if t * L + L <= p0 + T {
                    for j in 0..<D { m.row(done, D)[j] = acc.p[j] / Float(L) }
                    done += 1
                    s.sliceSum.zero()
                } else {
                    s.sliceSum.p.update(from: acc.p, count: D)
                }
            }
            let gqkv = l.globalQKV(m.p, rows: done)
            var next = 0
            for t in first...last {
                g.row(t - first, D).update(from: s.g.p, count: D)
                if t * L + L <= p0 + T {
                    completeSlice(l, s, slice: t, summary: m.row(next, D), projections: gqkv.row(next, 3 * D))
                    next += 1
                }
            }

            // Compose: h += (a + g_slice)·Woᵀ + bo, then the MLP.
            for i in 0..<T { Kernels.add(g.row((p0 + i) / L - first, D), into: a.row(i, D), count: D) }
            l.o.apply(a.p, rows: T, into: h.p, accumulate: true)
            l.ffn.apply(h.p, rows: T, u: u.p, f: f.p)
        }
        c.position += T
        let rows = logitsFor.clamped(to: 0..<T)
        return output.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    /// One token of each of B sequences: per layer LN, the fused QKV product, Wo and the
    /// MLP over the B rows at once, local attention per sequence from its own ring; then,
    /// for the sequences whose token completes its slice, their summaries (projections in
    /// one product) go to `completeSlice`. Returns the logits, a row per sequence.
    func sliceStep(_ tokens: [Int], _ cs: [Cache]) -> [Float] {
        let B = tokens.count, D = config.dModel
        precondition(cs.count == B, "step: \(B) tokens for \(cs.count) caches")
        precondition(tokens.allSatisfy { $0 >= 0 && $0 < config.vocabSize }, "step: token id out of range")
        let h = Floats(count: B * D, zeroed: false), u = Floats(count: B * D, zeroed: false)
        let qkv = Floats(count: B * 3 * D, zeroed: false), a = Floats(count: B * D, zeroed: false)
        let f = Floats(count: B * config.dFF, zeroed: false)
        embedding(tokens, into: h.p)
        for (li, l) in layers.enumerated() {
            let L = l.local.L, W = l.local.W
            Kernels.layerNorm(h.p, rows: B, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: config.normEps, into: u.p)
            l.qkv.apply(u.p, rows: B, into: qkv.p)
            Kernels.parallelFor(B, minimum: 4) { range in
                let q = Floats(count: D, zeroed: false), sc = Floats(count: l.local.H * W, zeroed: false)
                for b in range {
                    let s = cs[b].layers[li]
                    l.local.token(
                        qkv.row(b, 3 * D), position: cs[b].position, ringK: s.k, ringV: s.v, query: q.p, scores: sc.p,
                        into: a.row(b, D))
                }
            }
            for b in 0..<B {
                let s = cs[b].layers[li]
                Kernels.add(a.row(b, D), into: s.sliceSum.p, count: D)
                Kernels.add(s.g.p, into: a.row(b, D), count: D)
            }
            l.o.apply(a.p, rows: B, into: h.p, accumulate: true)
            l.ffn.apply(h.p, rows: B, u: u.p, f: f.p)

            let ending = (0..<B).filter { cs[$0].position % L == L - 1 }
            guard !ending.isEmpty else { continue }
            let m = Floats(count: ending.count * D, zeroed: false)
            for (k, b) in ending.enumerated() {
                let s = cs[b].layers[li]
                for i in 0..<D { m.row(k, D)[i] = s.sliceSum.p[i] / Float(L) }
                s.sliceSum.zero()
            }
            let gqkv = l.globalQKV(m.p, rows: ending.count)
            for (k, b) in ending.enumerated() {
                completeSlice(l, cs[b].layers[li], slice: cs[b].position / L, summary: m.row(k, D), projections: gqkv.row(k, 3 * D))
            }
        }
        for c in cs { c.position += 1 }
        return output.logits(h.p, rows: B)
    }
}
