/// The three architectures of DESIGN.md.
public enum Architecture: String, Sendable, CaseIterable {
    case cstDecoder = "cst-decoder"
    case transformerDecoder = "transformer-decoder"
    case msTransEncoder = "ms-trans-encoder"

    public var isDecoder: Bool { self != .msTransEncoder }
}

public enum Activation: String, Sendable {
    case gelu, geluTanh = "gelu_tanh"
}

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
        switch self { case .window(let w): "\(w)"; case .fraction(let k): "N/\(k)" }
    }
}

/// config.json as a value: every key of DESIGN §4, validated. The original JSON is kept
/// beside it (in the .msz header) so that unknown keys survive as metadata.
public struct ModelConfig: Sendable, Equatable {
    public var architecture: Architecture
    public var vocabSize: Int
    public var dModel: Int
    public var nLayers: Int
    public var nHeads: Int
    public var dFF: Int
    public var normEps: Float
    public var activation: Activation
    public var tieEmbeddings: Bool
    public var eosTokenId: Int?
    // cst-decoder
    public var sliceLength = 0
    public var extensionRatio = 1
    public var maxSlices = 0
    public var sharedLocalGlobal = true
    // transformer-decoder
    public var maxPositions = 0
    // ms-trans-encoder
    public var layerScales: [[HeadScale]] = []
    public var labels: [String] = []
    public var maxLength = 0
    public var clsTokenId = 0

    public var dHead: Int { dModel / nHeads }
    /// Left extension E = (α−1)·L/2 of the local window.
    public var leftExtension: Int { (extensionRatio - 1) * sliceLength / 2 }
    /// The model's context in tokens: G·L for CST, max_positions for the baseline.
    public var context: Int {
        switch architecture {
        case .cstDecoder: maxSlices * sliceLength
        case .transformerDecoder: maxPositions
        case .msTransEncoder: maxLength
        }
    }

    public init(json: JSONValue) throws {
        guard let o = json.objectValue else { throw MSGenError("config is not a JSON object") }
        func int(_ key: String, min: Int = 1) throws -> Int {
            guard let v = o[key] else { throw MSGenError("config is missing '\(key)'") }
            guard let i = v.intValue, i >= min else { throw MSGenError("config '\(key)' must be an integer ≥ \(min), not \(v.compactText)") }
            return i
        }
        func bool(_ key: String, _ def: Bool) throws -> Bool {
            guard let v = o[key] else { return def }
            guard let b = v.boolValue else { throw MSGenError("config '\(key)' must be true or false, not \(v.compactText)") }
            return b
        }
        guard let archName = o["architecture"]?.stringValue else { throw MSGenError("config is missing 'architecture'") }
        guard let arch = Architecture(rawValue: archName) else {
            throw MSGenError("unknown architecture '\(archName)' (msgen runs \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        architecture = arch
        vocabSize = try int("vocab_size")
        dModel = try int("d_model")
        nLayers = try int("n_layers")
        nHeads = try int("n_heads")
        dFF = try int("d_ff")
        try check(dModel % nHeads == 0, "config d_model \(dModel) is not divisible by n_heads \(nHeads)")
        if let v = o["norm_eps"] {
            guard let e = v.doubleValue, e > 0 else { throw MSGenError("config 'norm_eps' must be a positive number") }
            normEps = Float(e)
        } else { normEps = 1e-5 }
        let act = o["activation"]?.stringValue ?? "gelu"
        guard let a = Activation(rawValue: act) else { throw MSGenError("config 'activation' must be gelu or gelu_tanh, not \(act)") }
        activation = a
        tieEmbeddings = try bool("tie_embeddings", false)
        if let v = o["eos_token_id"], v != .null {
            guard let e = v.intValue, e >= 0, e < vocabSize else { throw MSGenError("config 'eos_token_id' must be a token id below vocab_size") }
            eosTokenId = e
        }
        switch arch {
        case .cstDecoder:
            sliceLength = try int("slice_length")
            extensionRatio = try int("extension_ratio")
            maxSlices = try int("max_slices")
            sharedLocalGlobal = try bool("shared_local_global", true)
            try check((1...3).contains(extensionRatio), "config 'extension_ratio' must be 1, 2 or 3, not \(extensionRatio)")
            try check((extensionRatio - 1) * sliceLength % 2 == 0,
                      "config: the left extension (α−1)·L/2 = (\(extensionRatio)−1)·\(sliceLength)/2 is not an integer")
        case .transformerDecoder:
            maxPositions = try int("max_positions")
        case .msTransEncoder:
            maxLength = try int("max_length", min: 2)
            clsTokenId = try int("cls_token_id", min: 0)
            try check(clsTokenId < vocabSize, "config 'cls_token_id' \(clsTokenId) is not below vocab_size \(vocabSize)")
            guard let labelList = o["labels"]?.arrayValue?.compactMap(\.stringValue), !labelList.isEmpty,
                  labelList.count == o["labels"]?.arrayValue?.count else {
                throw MSGenError("config 'labels' must be a non-empty list of strings")
            }
            labels = labelList
            guard let layers = o["layer_scales"]?.arrayValue, layers.count == nLayers else {
                throw MSGenError("config 'layer_scales' must hold one list per layer (\(nLayers))")
            }
            layerScales = try layers.enumerated().map { (i, layer) in
                guard let heads = layer.arrayValue, heads.count == nHeads else {
                    throw MSGenError("config 'layer_scales'[\(i)] must hold one scale per head (\(nHeads))")
                }
                return try heads.map { try ModelConfig.parseScale($0, layer: i) }
            }
        }
    }

    static func parseScale(_ v: JSONValue, layer: Int) throws -> HeadScale {
        if let w = v.intValue, w >= 1, w % 2 == 1 { return .window(w) }
        if let s = v.stringValue, s.hasPrefix("N/"), let k = Int(s.dropFirst(2)), k >= 1 { return .fraction(k) }
        throw MSGenError("config 'layer_scales'[\(layer)] has \(v.compactText): a scale is an odd integer or \"N/k\"")
    }

    /// Every tensor the architecture needs, with its shape (DESIGN §4), in a natural order.
    public var expectedTensors: [(name: String, shape: [Int])] {
        let D = dModel, F = dFF
        var t: [(String, [Int])] = [("embed.weight", [vocabSize, D])]
        switch architecture {
        case .cstDecoder:
            t += [("pos_local.weight", [leftExtension + sliceLength, D]), ("pos_global.weight", [maxSlices, D])]
        case .transformerDecoder:
            t += [("pos.weight", [maxPositions, D])]
        case .msTransEncoder: break
        }
        for i in 0..<nLayers {
            let p = "layers.\(i)."
            var projections = ["q", "k", "v", "o"]
            if architecture == .cstDecoder && !sharedLocalGlobal { projections += ["gq", "gk", "gv"] }
            if architecture.isDecoder { t += [(p + "norm1.weight", [D]), (p + "norm1.bias", [D])] }
            for x in projections { t += [(p + "attn.\(x)_proj.weight", [D, D]), (p + "attn.\(x)_proj.bias", [D])] }
            if architecture.isDecoder {
                t += [(p + "norm2.weight", [D]), (p + "norm2.bias", [D]),
                      (p + "mlp.fc1.weight", [F, D]), (p + "mlp.fc1.bias", [F]),
                      (p + "mlp.fc2.weight", [D, F]), (p + "mlp.fc2.bias", [D])]
            } else {
                t += [(p + "norm.weight", [D]), (p + "norm.bias", [D])]
            }
        }
        if architecture.isDecoder {
            t += [("norm_f.weight", [D]), ("norm_f.bias", [D])]
            if !tieEmbeddings { t += [("lm_head.weight", [vocabSize, D])] }
        } else {
            t += [("classifier.fc1.weight", [F, 2 * D]), ("classifier.fc1.bias", [F]),
                  ("classifier.fc2.weight", [labels.count, F]), ("classifier.fc2.bias", [labels.count])]
        }
        return t
    }

    /// Checks tensors against `expectedTensors`; the error names every problem found.
    public func validate(_ tensors: [String: (dtype: DType, shape: [Int])]) throws {
        var problems: [String] = []
        let expected = expectedTensors
        for (name, shape) in expected {
            guard let t = tensors[name] else { problems.append("missing \(name) \(shapeString(shape))"); continue }
            if t.shape != shape { problems.append("\(name) has shape \(shapeString(t.shape)), config needs \(shapeString(shape))") }
            if !t.dtype.isFloat { problems.append("\(name) has dtype \(t.dtype), weights must be f32, f16, bf16 or q8") }
        }
        let known = Set(expected.map(\.name))
        for name in tensors.keys.sorted() where !known.contains(name) { problems.append("unexpected \(name)") }
        if !problems.isEmpty {
            let shown = problems.prefix(6).joined(separator: "; ")
            let more = problems.count > 6 ? "; and \(problems.count - 6) more" : ""
            throw MSGenError("weights do not match the \(architecture.rawValue) config: \(shown)\(more)")
        }
    }
}
