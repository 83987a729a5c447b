import MSFormat
import MSKernels

/// One MS-Trans head's window: a fixed odd width, or "N/k" (the sequence length with
/// [CLS] divided by k, rounded down to an odd number ≥ 1).
public enum HeadScale: Equatable, Sendable, CustomStringConvertible {
    case window(Int)
    case fraction(Int)

    public func width(sequenceLength n: Int) -> Int {
        switch self {
        case .window(let w): return w
        case .fraction(let k):
            let w = n / k
            return max(1, w % 2 == 0 ? w - 1 : w)
        }
    }
    public var description: String {
        switch self {
        case .window(let w): "\(w)";
        case .fraction(let k): "N/\(k)"
        }
    }

    init(_ v: JSONValue, layer: Int) throws {
        if let w = v.intValue, w >= 1, w % 2 == 1 { self = .window(w); return }
        if let s = v.stringValue, s.hasPrefix("N/"), let k = Int(s.dropFirst(2)), k >= 1 { self = .fraction(k); return }
        throw MSGenError("config 'layer_scales'[\(layer)] has \(v.compactText): a scale is an odd integer or \"N/k\"")
    }
}

/// config.json of an ms-trans-encoder: the common keys, the layers' head scales, the
/// labels, the longest input and the [CLS] token.
public struct MSTransConfig: ArchitectureConfig, Equatable {
    public var common: CommonConfig
    public var nLayers: Int
    public var layerScales: [[HeadScale]]
    public var labels: [String]
    public var maxLength: Int
    public var clsTokenId: Int

    public init(_ r: ConfigReader) throws {
        common = try CommonConfig(r, architecture: "ms-trans-encoder")
        nLayers = try r.int("n_layers")
        maxLength = try r.int("max_length", min: 2)
        clsTokenId = try r.int("cls_token_id", min: 0)
        try check(clsTokenId < common.vocabSize, "config 'cls_token_id' \(clsTokenId) is not below vocab_size \(common.vocabSize)")
        guard let labelList = r.object["labels"]?.arrayValue?.compactMap(\.stringValue), !labelList.isEmpty,
            labelList.count == r.object["labels"]?.arrayValue?.count
        else {
            throw MSGenError("config 'labels' must be a non-empty list of strings")
        }
        labels = labelList
        guard let layers = r.object["layer_scales"]?.arrayValue, layers.count == nLayers else {
            throw MSGenError("config 'layer_scales' must hold one list per layer (\(nLayers))")
        }
        let H = common.nHeads
        layerScales = try layers.enumerated().map { (i, layer) in
            guard let heads = layer.arrayValue, heads.count == H else {
                throw MSGenError("config 'layer_scales'[\(i)] must hold one scale per head (\(H))")
            }
            return try heads.map { try HeadScale($0, layer: i) }
        }
        common.context = maxLength
    }
}

/// The Multi-Scale Transformer text classifier (README.md beside this file, "MS-Trans
/// encoder").
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
public final class MSTransEncoder: TextClassifier, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        classifier: "ms-trans-encoder",
        describe: {
            let c = try MSTransConfig($0)
            return "\(c.labels.count) labels; inputs of at most \(c.maxLength) tokens with [CLS]"
        },
        build: { try MSTransEncoder(MSTransConfig($0), $1) })

    public let config: MSTransConfig
    public var labels: [String] { config.labels }
    let D, H, dh, F, V, C: Int
    let scale: Float
    let embed: Embedding
    let layers: [Layer]
    let fc1, fc2: Linear

    struct Layer {
        let qkv: Linear  // [Wq; Wk; Wv]: one [3D, D] product
        let o: Linear
        let norm: (weight: Floats, bias: Floats)
        let scales: [HeadScale]  // one per head
    }

    public init(_ c: MSTransConfig, _ w: Weights) throws {
        try check(Set(c.labels).count == c.labels.count, "config 'labels' names a label twice: \(c.labels.joined(separator: ", "))")
        config = c
        D = c.common.dModel; H = c.common.nHeads; dh = c.common.dHead; F = c.common.dFF; V = c.common.vocabSize; C = c.labels.count
        scale = 1 / Float(dh).squareRoot()
        let D = D
        embed = try Embedding(w, config: c.common)
        layers = try (0..<c.nLayers).map { i in
            let p = "layers.\(i)."
            return Layer(
                qkv: try w.fused(["q", "k", "v"].map { p + "attn.\($0)_proj" }, out: D, in: D),
                o: try w.linear(p + "attn.o_proj", out: D, in: D), norm: try w.norm(p + "norm", D), scales: c.layerScales[i])
        }
        fc1 = try w.linear("classifier.fc1", out: F, in: 2 * D)
        fc2 = try w.linear("classifier.fc2", out: C, in: F)
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
        embed(tokens, into: h.p)

        for l in layers {
            l.qkv.apply(h.p, rows: n, into: qkv.p)
            // MSMSA: each head attends inside its own band around the query.
            for (hd, s) in l.scales.enumerated() {
                let half = (s.width(sequenceLength: n) - 1) / 2
                for i in 0..<n {
                    let lo = max(0, i - half), hi = min(n - 1, i + half)
                    Kernels.attend(
                        query: qkv.row(i, 3 * D) + hd * dh, keys: qkv.row(lo, 3 * D) + D + hd * dh, keyStride: 3 * D,
                        values: qkv.row(lo, 3 * D) + 2 * D + hd * dh, valueStride: 3 * D,
                        count: hi - lo + 1, headDim: dh, scale: scale, scores: scores.p, into: a.row(i, D) + hd * dh)
                }
            }
            // H ← LN(H + ReLU(concat(heads)·Woᵀ + bo))
            l.o.apply(a.p, rows: n, into: y.p)
            Kernels.relu(y.p, count: n * D)
            Kernels.add(h.p, into: y.p, count: n * D)
            Kernels.layerNorm(y.p, rows: n, dim: D, weight: l.norm.weight.p, bias: l.norm.bias.p, eps: config.common.normEps, into: h.p)
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
        fc1.apply(sentence.p, rows: 1, into: hidden.p)
        Kernels.relu(hidden.p, count: F)
        return [Float](unsafeUninitializedCapacity: C) { out, done in
            fc2.apply(hidden.p, rows: 1, into: out.baseAddress!)
            done = C
        }
    }
}
