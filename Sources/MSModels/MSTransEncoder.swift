import MSFormat
import MSKernels

/// The Multi-Scale Transformer text classifier of DESIGN.md §3.
///
/// [CLS] is put in front of the text's tokens and the whole sequence goes through the
/// layers at once. Each layer is post-norm, without a feed-forward sublayer:
///
///     H ← LN(H + ReLU(MSMSA(H)))
///
/// where head h lets token i attend to the tokens j with |i − j| ≤ (ω_h − 1)/2, ω_h
/// the head's window (fixed, or "N/k" of the sequence length with [CLS]). There is no
/// positional embedding: the windows are the only notion of position. The sentence
/// vector concat(h_CLS, max over the text tokens) goes through fc2(ReLU(fc1(·))).
public final class MSTransEncoder: @unchecked Sendable {
    public let config: ModelConfig
    let D, H, dh, F, V, C: Int
    let scale: Float
    let embed: Floats
    let layers: [Layer]
    let fc1w, fc1b, fc2w, fc2b: Floats

    struct Layer {
        let wqkv, bqkv: Floats      // Wq, Wk, Wv stacked: one [3D, D] projection
        let wo, bo: Floats
        let normw, normb: Floats
        let scales: [HeadScale]     // one per head
    }

    /// What one text is classified as.
    public struct Classification: Sendable, Equatable {
        /// Scores over `config.labels`, and their softmax.
        public let logits: [Float]
        public let probs: [Float]
        /// Tokens of the text that went through the model (without [CLS]).
        public let tokens: Int
        /// True when the text had more than max_length − 1 tokens and only the first
        /// max_length − 1 were used.
        public let truncated: Bool
    }

    public init(config c: ModelConfig, tensors: [String: Tensor]) throws {
        try check(c.architecture == .msTransEncoder, "not an ms-trans-encoder config")
        var shapes: [String: (dtype: DType, shape: [Int])] = [:]
        for (k, t) in tensors { shapes[k] = (t.dtype, t.shape) }
        try c.validate(shapes)
        try check(Set(c.labels).count == c.labels.count, "config 'labels' names a label twice: \(c.labels.joined(separator: ", "))")
        config = c
        D = c.dModel; H = c.nHeads; dh = c.dHead; F = c.dFF; V = c.vocabSize; C = c.labels.count
        scale = 1 / Float(c.dHead).squareRoot()
        let w = WeightSource(tensors: tensors)
        embed = try w("embed.weight")
        layers = try (0..<c.nLayers).map { i in
            let p = "layers.\(i)."
            let qkv = ["q", "k", "v"].map { p + "attn.\($0)_proj" }
            return Layer(
                wqkv: try w.stacked(qkv.map { $0 + ".weight" }), bqkv: try w.stacked(qkv.map { $0 + ".bias" }),
                wo: try w(p + "attn.o_proj.weight"), bo: try w(p + "attn.o_proj.bias"),
                normw: try w(p + "norm.weight"), normb: try w(p + "norm.bias"),
                scales: c.layerScales[i])
        }
        fc1w = try w("classifier.fc1.weight"); fc1b = try w("classifier.fc1.bias")
        fc2w = try w("classifier.fc2.weight"); fc2b = try w("classifier.fc2.bias")
    }

    /// The most text tokens one input can have: max_length less the [CLS] token.
    public var maxTextTokens: Int { config.maxLength - 1 }

    /// The window of every head of every layer for a sequence of `n` tokens with [CLS].
    public func windows(sequenceLength n: Int) -> [[Int]] {
        layers.map { $0.scales.map { $0.width(sequenceLength: n) } }
    }

    /// Classifies one text given as token ids without [CLS]. Text longer than
    /// max_length − 1 tokens is cut to its first max_length − 1 (`truncated` says so).
    ///
    /// An empty text is an error, not a degenerate input: the max over the text tokens
    /// would be over an empty set (−∞ in PyTorch, which then gives NaN logits). Since
    /// max_length ≥ 2, a non-empty text keeps at least one token after truncation.
    public func classify(_ text: [Int]) throws -> Classification {
        try check(!text.isEmpty, "empty text cannot be classified")
        try check(text.allSatisfy { $0 >= 0 && $0 < V }, "token id out of range for a vocabulary of \(V)")
        let kept = Array(text.prefix(maxTextTokens))
        let logits = forward([config.clsTokenId] + kept)
        var probs = logits
        probs.withUnsafeMutableBufferPointer { Kernels.softmax($0.baseAddress!, count: C) }
        return Classification(logits: logits, probs: probs, tokens: kept.count, truncated: kept.count < text.count)
    }

    // MARK: - Forward

    /// Logits over the labels for `tokens` = [CLS] + text (2 ≤ n ≤ max_length).
    func forward(_ tokens: [Int]) -> [Float] {
        classifierHead(encode(tokens), rows: tokens.count)
    }

    /// The last layer's states [n, D] of `tokens`, matrix by matrix over the whole sequence.
    func encode(_ tokens: [Int]) -> Floats {
        let n = tokens.count
        let h = Floats(count: n * D), qkv = Floats(count: n * 3 * D), a = Floats(count: n * D), y = Floats(count: n * D)
        let scores = Floats(count: n)
        for (i, t) in tokens.enumerated() { h.row(i, D).update(from: embed.row(t, D), count: D) }

        for l in layers {
            Kernels.linear(h.p, rows: n, in: D, weight: l.wqkv.p, out: 3 * D, bias: l.bqkv.p, into: qkv.p)
            // MSMSA: each head attends inside its own band around the query.
            for (hd, s) in l.scales.enumerated() {
                let half = (s.width(sequenceLength: n) - 1) / 2
                for i in 0..<n {
                    let lo = max(0, i - half), hi = min(n - 1, i + half)
                    Kernels.attend(query: qkv.row(i, 3 * D) + hd * dh, keys: qkv.row(lo, 3 * D) + D + hd * dh, keyStride: 3 * D,
                                   values: qkv.row(lo, 3 * D) + 2 * D + hd * dh, valueStride: 3 * D,
                                   count: hi - lo + 1, headDim: dh, scale: scale, scores: scores.p, into: a.row(i, D) + hd * dh)
                }
            }
            // H ← LN(H + ReLU(concat(heads)·Woᵀ + bo))
            Kernels.linear(a.p, rows: n, in: D, weight: l.wo.p, out: D, bias: l.bo.p, into: y.p)
            Kernels.relu(y.p, count: n * D)
            Kernels.add(h.p, into: y.p, count: n * D)
            Kernels.layerNorm(y.p, rows: n, dim: D, weight: l.normw.p, bias: l.normb.p, eps: config.normEps, into: h.p)
        }
        return h
    }

    /// fc2(ReLU(fc1(s))) of the sentence vector s = [h_CLS | max over tokens 1..n−1 of h_j].
    func classifierHead(_ h: Floats, rows n: Int) -> [Float] {
        precondition(n >= 2, "the sentence vector needs at least one text token")
        let sentence = Floats(count: 2 * D)
        sentence.p.update(from: h.p, count: D)
        let pooled = sentence.p + D
        pooled.update(from: h.row(1, D), count: D)
        for j in 2..<n {
            let r = h.row(j, D)
            for k in 0..<D { pooled[k] = max(pooled[k], r[k]) }
        }
        let hidden = Floats(count: F)
        Kernels.linear(sentence.p, rows: 1, in: 2 * D, weight: fc1w.p, out: F, bias: fc1b.p, into: hidden.p)
        Kernels.relu(hidden.p, count: F)
        return [Float](unsafeUninitializedCapacity: C) { out, done in
            Kernels.linear(hidden.p, rows: 1, in: F, weight: fc2w.p, out: C, bias: fc2b.p, into: out.baseAddress!)
            done = C
        }
    }
}
