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
    /// to itself, all of which the ring holds. `keys` and `values` hold W·D floats of
    /// scratch, `query` D, `scores` W.
    func token(
        _ qkv: UnsafePointer<Float>, position p: Int, ringK: Floats, ringV: Floats,
        keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, query: UnsafeMutablePointer<Float>,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        let r = p % L, first = max(0, p - r - E), n = p - first + 1
        ringK.row(p % W, D).update(from: qkv + D, count: D)
        ringV.row(p % W, D).update(from: qkv + 2 * D, count: D)
        Kernels.sum(qkv, plQ.row(E + r, D), into: query, count: D)
        for j in first...p {
            Kernels.sum(ringK.row(j % W, D), plK.row(E + j - (p - r), D), into: keys + (j - first) * D, count: D)
            (values + (j - first) * D).update(from: ringV.row(j % W, D), count: D)
        }
        for hd in 0..<H {
            Kernels.attend(
                query: query + hd * dh, keys: keys + hd * dh, keyStride: D, values: values + hd * dh,
                valueStride: D, count: n, headDim: dh, scale: scale, scores: scores, into: out + hd * dh)
        }
    }
}

/// What the batched step of a slice decoder (CST, retina) reads of one of its layers.
protocol SliceLayer {
    var norm1: (weight: Floats, bias: Floats) { get }
    var qkv: Linear { get }
    var local: LocalAttention { get }
    var o: Linear { get }
    var globalQKV: Linear { get }
    var ffn: FeedForward { get }
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

/// One token of each of B sequences through a slice decoder, all but the global part,
/// which CST and retina share: per layer LN, the fused QKV product, Wo and the MLP over
/// the B rows at once, local attention per sequence from its own ring, each token's a
/// added into its slice sum and the slice's g into a. For the sequences whose token
/// completes its slice, `complete(layer, sequences, m, gqkv)` then gets their summaries
/// m (the slice means, rows of D; the sums are reset) and their global projections
/// [gq | gk | gv] (one product for all of them). Returns the logits, a row per sequence.
func sliceStep<Layer: SliceLayer, Cache: SliceCache>(
    _ tokens: [Int], _ cs: [Cache], layers: [Layer], embedding: Embedding, output: OutputHead, config: CommonConfig,
    complete: (_ layer: Int, _ sequences: [Int], _ m: Floats, _ gqkv: Floats) -> Void
) -> [Float] {
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
            let wk = Floats(count: W * D, zeroed: false), wv = Floats(count: W * D, zeroed: false)
            let q = Floats(count: D, zeroed: false), sc = Floats(count: W, zeroed: false)
            for b in range {
                let s = cs[b].layers[li]
                l.local.token(
                    qkv.row(b, 3 * D), position: cs[b].position, ringK: s.k, ringV: s.v,
                    keys: wk.p, values: wv.p, query: q.p, scores: sc.p, into: a.row(b, D))
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
        complete(li, ending, m, l.globalQKV(m.p, rows: ending.count))
    }
    for c in cs { c.position += 1 }
    return output.logits(h.p, rows: B)
}
