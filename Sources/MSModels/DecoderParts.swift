import MSFormat
import MSKernels

/// The pre-norm MLP sublayer the decoders share: h += fc2(act(fc1(LN2(h)))).
struct FeedForward {
    let norm: (weight: Floats, bias: Floats)
    let fc1, fc2: Linear
    let dModel: Int, eps: Float, activation: Activation

    init(_ w: Weights, prefix p: String, config c: CommonConfig) throws {
        norm = try w.norm(p + "norm2", c.dModel)
        fc1 = try w.linear(p + "mlp.fc1", out: c.dFF, in: c.dModel)
        fc2 = try w.linear(p + "mlp.fc2", out: c.dModel, in: c.dFF)
        dModel = c.dModel; eps = c.normEps; activation = c.activation
    }

    /// On `rows` rows of h; `u` holds rows·D floats of scratch, `f` rows·F.
    func apply(_ h: UnsafeMutablePointer<Float>, rows: Int, u: UnsafeMutablePointer<Float>, f: UnsafeMutablePointer<Float>) {
        Kernels.layerNorm(h, rows: rows, dim: dModel, weight: norm.weight.p, bias: norm.bias.p, eps: eps, into: u)
        fc1.apply(u, rows: rows, into: f)
        switch activation {
        case .gelu: Kernels.gelu(f, count: rows * fc1.outFeatures)
        case .geluTanh: Kernels.geluTanh(f, count: rows * fc1.outFeatures)
        }
        fc2.apply(f, rows: rows, into: h, accumulate: true)
    }
}

/// The token embedding table [V, D] in its stored dtype: row t is token t's vector.
struct Embedding {
    let table: WeightMatrix
    let owner: AnyObject

    init(_ w: Weights, config c: CommonConfig) throws {
        (table, owner) = try w.matrix("embed.weight", rows: c.vocabSize, cols: c.dModel)
    }

    /// The rows of `tokens`, as float32, one after another.
    func callAsFunction(_ tokens: [Int], into h: UnsafeMutablePointer<Float>) {
        for (i, t) in tokens.enumerated() { Kernels.widen(table.rows(t..<(t + 1)), into: h + i * table.cols) }
    }

    /// The tied output projection: the same matrix as a Linear.
    var asLinear: Linear { Linear(weight: table, bias: nil, owner: owner) }
}

/// The final norm and the output projection (the embedding itself when tied).
struct OutputHead {
    let norm: (weight: Floats, bias: Floats)
    let head: Linear
    let eps: Float

    init(_ w: Weights, config c: CommonConfig, embedding: Embedding) throws {
        norm = try w.norm("norm_f", c.dModel)
        if c.tieEmbeddings {
            head = embedding.asLinear
            w.readsEveryToken(head)
        } else {
            head = try w.linear("lm_head", out: c.vocabSize, in: c.dModel, bias: false)
        }
        eps = c.normEps
    }

    /// Logits of `rows` rows of h (which is left unchanged).
    func logits(_ h: UnsafePointer<Float>, rows: Int) -> [Float] {
        guard rows > 0 else { return [] }
        let D = head.inFeatures, V = head.outFeatures
        let u = Floats(count: rows * D, zeroed: false)
        Kernels.layerNorm(h, rows: rows, dim: D, weight: norm.weight.p, bias: norm.bias.p, eps: eps, into: u.p)
        return [Float](unsafeUninitializedCapacity: rows * V) { out, done in
            head.apply(u.p, rows: rows, into: out.baseAddress!)
            done = rows * V
        }
    }
}

/// §2's pre-norm GPT-2 block: h += MHA(LN1(h))·Woᵀ + bo with causal attention, then the
/// MLP sublayer. The baseline is a stack of these; the multi-scale decoders run one stack
/// per scale, over that scale's rows.
struct DecoderBlock {
    let norm1: (weight: Floats, bias: Floats)
    let qkv: Linear  // [Wq; Wk; Wv]: one [3D, D] product
    let o: Linear
    let ffn: FeedForward

    /// Reads `prefix` + norm1, attn.{q,k,v,o}_proj, norm2, mlp.fc1, mlp.fc2, in that order.
    init(_ w: Weights, prefix p: String, config c: CommonConfig) throws {
        let D = c.dModel
        norm1 = try w.norm(p + "norm1", D)
        qkv = try w.fused(["q", "k", "v"].map { p + "attn.\($0)_proj" }, out: D, in: D)
        o = try w.linear(p + "attn.o_proj", out: D, in: D)
        ffn = try FeedForward(w, prefix: p, config: c)
    }
}

/// The keys and values of one block's rows so far, for one sequence. Rows below the
/// owner's position are filled; the rest is allocated but untouched (no resident memory).
final class KVRows {
    let k, v: Floats  // [capacity, D]
    let D: Int

    init(capacity: Int, D: Int) {
        k = Floats(count: capacity * D, zeroed: false); v = Floats(count: capacity * D, zeroed: false); self.D = D
    }

    /// Stores the key and value of the row at `position` from its [q | k | v] row.
    func append(_ qkv: UnsafePointer<Float>, at position: Int) {
        k.row(position, D).update(from: qkv + D, count: D)
        v.row(position, D).update(from: qkv + 2 * D, count: D)
    }

    /// The first `rows` keys, then values (for tests comparing two caches).
    func state(rows: Int) -> [Float] {
        Array(UnsafeBufferPointer(start: k.p, count: rows * D)) + Array(UnsafeBufferPointer(start: v.p, count: rows * D))
    }
}

/// A stack of `DecoderBlock`s run causally over the rows of a sequence, with one `KVRows`
/// per block as its state: in one pass over many new rows of one sequence (`forward`), or
/// one new row of each of several sequences (`step`). Both leave the same state.
struct BlockStack {
    let blocks: [DecoderBlock]
    let D, H, dh, dFF: Int
    let scale, eps: Float

    /// Blocks `prefix`0., `prefix`1., … (e.g. "layers." or "scales.1.layers.").
    init(_ w: Weights, prefix: String, count: Int, config c: CommonConfig) throws {
        blocks = try (0..<count).map { try DecoderBlock(w, prefix: "\(prefix)\($0).", config: c) }
        D = c.dModel; H = c.nHeads; dh = c.dHead; dFF = c.dFF; eps = c.normEps
        scale = 1 / Float(dh).squareRoot()
    }

    /// Empty state for a sequence of at most `capacity` rows.
    func makeState(capacity: Int) -> [KVRows] { blocks.map { _ in KVRows(capacity: capacity, D: D) } }

    /// T new rows of one sequence, at positions start ..< start+T, in place in h [T, D]:
    /// row i attends to every cached row and to the new rows up to itself.
    func forward(_ h: UnsafeMutablePointer<Float>, rows T: Int, start: Int, state: [KVRows]) {
        guard T > 0 else { return }
        let D = D
        // Activations, each written in full before it is read: not zeroed first.
        let u = Floats(count: T * D, zeroed: false), qkv = Floats(count: T * 3 * D, zeroed: false)
        let a = Floats(count: T * D, zeroed: false), f = Floats(count: T * dFF, zeroed: false)
        // Score rows of the causal attention, one set per thread, shared by every block.
        let perThread = Kernels.causalScratch(keys: start + T), threads = min(H, Kernels.threads)
        let scratch = Floats(count: perThread * threads, zeroed: false)
        for (li, l) in blocks.enumerated() {
            let s = state[li]
            Kernels.layerNorm(h, rows: T, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: eps, into: u.p)
            l.qkv.apply(u.p, rows: T, into: qkv.p)
            for i in 0..<T { s.append(qkv.row(i, 3 * D), at: start + i) }
            // The heads split over the threads (each head's products single-threaded).
            Kernels.parallelFor(threads) { parts in
                for part in parts {
                    for hd in (H * part / threads)..<(H * (part + 1) / threads) {
                        Kernels.causalAttention(
                            queries: qkv.p + hd * dh, queryStride: 3 * D, keys: s.k.p + hd * dh, keyStride: D,
                            values: s.v.p + hd * dh, valueStride: D, start: start, count: T, headDim: dh,
                            scale: scale, scratch: scratch.p + part * perThread, into: a.p + hd * dh, outStride: D)
                    }
                }
            }
            l.o.apply(a.p, rows: T, into: h, accumulate: true)
            l.ffn.apply(h, rows: T, u: u.p, f: f.p)
        }
    }

    /// One new row of each of B sequences, in place in h [B, D]: row b is at
    /// `positions[b]` of the sequence whose state is `states[b]`. The products run over
    /// the batch; attention per sequence over its own rows.
    func step(_ h: UnsafeMutablePointer<Float>, positions: [Int], states: [[KVRows]]) {
        let B = positions.count, D = D
        guard B > 0 else { return }
        let u = Floats(count: B * D, zeroed: false), qkv = Floats(count: B * 3 * D, zeroed: false)
        let a = Floats(count: B * D, zeroed: false), f = Floats(count: B * dFF, zeroed: false)
        let keys = positions.max()! + 1
        for (li, l) in blocks.enumerated() {
            Kernels.layerNorm(h, rows: B, dim: D, weight: l.norm1.weight.p, bias: l.norm1.bias.p, eps: eps, into: u.p)
            l.qkv.apply(u.p, rows: B, into: qkv.p)
            Kernels.parallelFor(B, minimum: 4) { range in
                let scores = Floats(count: H * keys, zeroed: false)
                for b in range {
                    let s = states[b][li], p = positions[b]
                    s.append(qkv.row(b, 3 * D), at: p)
                    // The cache rows split over the threads only when the batch is not.
                    Kernels.attendHeads(
                        query: qkv.row(b, 3 * D), keys: s.k.p, keyStride: D, values: s.v.p, valueStride: D, count: p + 1,
                        heads: H, headDim: dh, scale: scale, split: range.count == B, scores: scores.p, into: a.row(b, D))
                }
            }
            l.o.apply(a.p, rows: B, into: h, accumulate: true)
            l.ffn.apply(h, rows: B, u: u.p, f: f.p)
        }
    }
}
