import MSFormat

/// Reads config.json keys with one wording for every problem, so that each architecture's
/// config says only which keys it has and what values they may take.
public struct ConfigReader {
    public let object: [String: JSONValue]

    public init(_ json: JSONValue) throws {
        guard let o = json.objectValue else { throw MSGenError("config is not a JSON object") }
        object = o
    }

    public func has(_ key: String) -> Bool { object[key] != nil && object[key] != .null }

    /// No size in a model comes near this (vocabularies stop at BPETokenizer's 2^24 ids);
    /// the bound keeps products of config sizes (G·L, E+L, V·D) from overflowing.
    public static let maxInt = 1 << 24

    public func int(_ key: String, min: Int = 1) throws -> Int {
        guard let v = object[key] else { throw MSGenError("config is missing '\(key)'") }
        guard let i = v.intValue, i >= min else { throw MSGenError("config '\(key)' must be an integer ≥ \(min), not \(v.compactText)") }
        guard i <= Self.maxInt else { throw MSGenError("config '\(key)' is \(i), more than the \(Self.maxInt) msgen allows for any size") }
        return i
    }

    public func bool(_ key: String, default value: Bool) throws -> Bool {
        guard let v = object[key] else { return value }
        guard let b = v.boolValue else { throw MSGenError("config '\(key)' must be true or false, not \(v.compactText)") }
        return b
    }

    public func string(_ key: String) throws -> String {
        guard let v = object[key] else { throw MSGenError("config is missing '\(key)'") }
        guard let s = v.stringValue else { throw MSGenError("config '\(key)' must be a string, not \(v.compactText)") }
        return s
    }

    /// A list of integers (each ≥ `min`).
    public func ints(_ key: String, min: Int = 1) throws -> [Int] {
        guard let v = object[key] else { throw MSGenError("config is missing '\(key)'") }
        guard let a = v.arrayValue, !a.isEmpty, let ints = Optional(a.compactMap(\.intValue)), ints.count == a.count,
            ints.allSatisfy({ $0 >= min && $0 <= Self.maxInt })
        else {
            throw MSGenError("config '\(key)' must be a non-empty list of integers from \(min) to \(Self.maxInt), not \(v.compactText)")
        }
        return ints
    }
}

public enum Activation: String, Sendable {
    case gelu, geluTanh = "gelu_tanh"
}

/// The keys every model shares (README.md beside this file), read once for all architectures.
public struct CommonConfig: Sendable, Equatable {
    public var architecture: String
    public var vocabSize: Int
    public var dModel: Int
    public var nHeads: Int
    public var dFF: Int
    public var normEps: Float
    public var activation: Activation
    public var tieEmbeddings: Bool
    public var eosTokenId: Int?
    /// The model's context in tokens (each architecture sets it from its own keys).
    public var context = 0

    public var dHead: Int { dModel / nHeads }

    public init(_ r: ConfigReader, architecture: String) throws {
        self.architecture = architecture
        vocabSize = try r.int("vocab_size")
        dModel = try r.int("d_model")
        nHeads = try r.int("n_heads")
        dFF = try r.int("d_ff")
        try check(dModel % nHeads == 0, "config d_model \(dModel) is not divisible by n_heads \(nHeads)")
        if let v = r.object["norm_eps"] {
            guard let e = v.doubleValue, e > 0 else { throw MSGenError("config 'norm_eps' must be a positive number") }
            normEps = Float(e)
        } else {
            normEps = 1e-5
        }
        let act = r.object["activation"]?.stringValue ?? "gelu"
        guard let a = Activation(rawValue: act) else { throw MSGenError("config 'activation' must be gelu or gelu_tanh, not \(act)") }
        activation = a
        tieEmbeddings = try r.bool("tie_embeddings", default: false)
        if let v = r.object["eos_token_id"], v != .null {
            guard let e = v.intValue, e >= 0, e < vocabSize else { throw MSGenError("config 'eos_token_id' must be a token id below vocab_size") }
            eosTokenId = e
        }
    }
}
