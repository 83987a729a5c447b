import Foundation
import MSFormat
import MSKernels

/// A float32 array with a stable address, for weights and activations. Models pass raw
/// pointers to the kernels; this class owns the memory those pointers point into.
public final class Floats: @unchecked Sendable {
    public let p: UnsafeMutablePointer<Float>
    public let count: Int
    /// The tensor whose memory this is, when a float32 weight is used as loaded.
    private let owner: TensorStorage?

    /// `zeroed: false` leaves large buffers untouched, so pages that are never written
    /// (the unused tail of a KV cache) never become resident.
    public init(count: Int, zeroed: Bool = true) {
        self.count = count
        p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        if zeroed { p.initialize(repeating: 0, count: max(count, 1)) }
        owner = nil
    }

    /// A float32 tensor's own memory, without a copy.
    init(_ t: Tensor) {
        precondition(t.dtype == .f32)
        count = t.count
        p = t.storage.bytes.baseAddress!.assumingMemoryBound(to: Float.self)
        owner = t.storage
    }

    deinit { if owner == nil { p.deallocate() } }

    /// Row `i` of a matrix with `width` columns.
    @inline(__always) public func row(_ i: Int, _ width: Int) -> UnsafeMutablePointer<Float> { p + i * width }
    public var array: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
    public func zero() { p.update(repeating: 0, count: count) }
}

/// The tensors of a model file, converted to float32 once at load and checked by name.
struct WeightSource {
    let tensors: [String: Tensor]

    func callAsFunction(_ name: String) throws -> Floats {
        guard let t = tensors[name] else { throw MSGenError("the model has no tensor \(name)") }
        if t.dtype == .f32 { return Floats(t) }
        let f = Floats(count: t.count)
        t.decode(into: f.p)
        return f
    }

    /// Several [rows, in] matrices stacked into one [Σ rows, in] matrix (for fused Q/K/V).
    func stacked(_ names: [String]) throws -> Floats {
        let parts = try names.map { try self($0) }
        let out = Floats(count: parts.reduce(0) { $0 + $1.count })
        var at = 0
        for part in parts { (out.p + at).update(from: part.p, count: part.count); at += part.count }
        return out
    }
}

/// What every decoder offers the generator: a fresh per-sequence state, a batched
/// prefill that leaves exactly the state token-by-token decoding would, and one step.
public protocol LanguageModel: AnyObject, Sendable {
    var config: ModelConfig { get }
    /// Whether `step` may go on past `config.context` tokens (CST rolls its summaries;
    /// a model with absolute positions cannot).
    var canDecodePastContext: Bool { get }
    func makeCache() -> DecoderCache
    /// Runs `tokens` from the cache's current (empty) state in one batched pass. Returns
    /// the logits of the positions in `logitsFor` (indices into `tokens`), row after row.
    func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float]
    /// Appends one token and returns the next-token logits.
    func step(_ token: Int, cache: DecoderCache) -> [Float]
}

/// Per-sequence state of a decoder.
public protocol DecoderCache: AnyObject {
    /// Tokens seen so far.
    var position: Int { get }
    /// Bytes of state held (for memory reports).
    var byteCount: Int { get }
}

/// The pre-norm decoder parts the CST and the baseline share.
struct FeedForward {
    let norm2w, norm2b, fc1w, fc1b, fc2w, fc2b: Floats
    let dModel: Int, dFF: Int, eps: Float, activation: Activation

    init(_ w: WeightSource, prefix p: String, config c: ModelConfig) throws {
        norm2w = try w(p + "norm2.weight"); norm2b = try w(p + "norm2.bias")
        fc1w = try w(p + "mlp.fc1.weight"); fc1b = try w(p + "mlp.fc1.bias")
        fc2w = try w(p + "mlp.fc2.weight"); fc2b = try w(p + "mlp.fc2.bias")
        dModel = c.dModel; dFF = c.dFF; eps = c.normEps; activation = c.activation
    }

    /// h += fc2(act(fc1(LN2(h)))) on `rows` rows. `u` holds rows·D floats, `f` rows·F.
    func apply(_ h: UnsafeMutablePointer<Float>, rows: Int, u: UnsafeMutablePointer<Float>, f: UnsafeMutablePointer<Float>) {
        Kernels.layerNorm(h, rows: rows, dim: dModel, weight: norm2w.p, bias: norm2b.p, eps: eps, into: u)
        Kernels.linear(u, rows: rows, in: dModel, weight: fc1w.p, out: dFF, bias: fc1b.p, into: f)
        switch activation {
        case .gelu: Kernels.gelu(f, count: rows * dFF)
        case .geluTanh: Kernels.geluTanh(f, count: rows * dFF)
        }
        Kernels.linear(f, rows: rows, in: dFF, weight: fc2w.p, out: dModel, bias: fc2b.p, into: h, accumulate: true)
    }
}

/// Embedding lookup and the final norm + output projection.
struct EmbeddingAndHead {
    let embed, normFw, normFb, head: Floats
    let vocab: Int, dModel: Int, eps: Float

    init(_ w: WeightSource, config c: ModelConfig) throws {
        embed = try w("embed.weight")
        normFw = try w("norm_f.weight"); normFb = try w("norm_f.bias")
        head = c.tieEmbeddings ? embed : try w("lm_head.weight")
        vocab = c.vocabSize; dModel = c.dModel; eps = c.normEps
    }

    func embed(_ tokens: [Int], into h: UnsafeMutablePointer<Float>) {
        for (i, t) in tokens.enumerated() { (h + i * dModel).update(from: embed.row(t, dModel), count: dModel) }
    }

    /// Logits of `rows` rows of h (which is left unchanged).
    func logits(_ h: UnsafePointer<Float>, rows: Int) -> [Float] {
        let u = Floats(count: rows * dModel, zeroed: false)
        Kernels.layerNorm(h, rows: rows, dim: dModel, weight: normFw.p, bias: normFb.p, eps: eps, into: u.p)
        return [Float](unsafeUninitializedCapacity: rows * vocab) { out, done in
            Kernels.linear(u.p, rows: rows, in: dModel, weight: head.p, out: vocab, bias: nil, into: out.baseAddress!)
            done = rows * vocab
        }
    }
}

/// Opens a model file for the decoder its architecture names.
public func loadLanguageModel(_ file: MSZFile) throws -> LanguageModel {
    let config = try ModelConfig(json: file.config)
    switch config.architecture {
    case .cstDecoder: return try CSTDecoder(config: config, tensors: try file.load())
    case .transformerDecoder: return try TransformerDecoder(config: config, tensors: try file.load())
    case .msTransEncoder:
        throw MSGenError("\((file.path as NSString).lastPathComponent) is an ms-trans-encoder (a classifier); this command needs a language model (cst-decoder or transformer-decoder)")
    }
}

/// Opens a model file as a text classifier (an ms-trans-encoder).
public func loadClassifier(_ file: MSZFile) throws -> MSTransEncoder {
    let config = try ModelConfig(json: file.config)
    guard config.architecture == .msTransEncoder else {
        throw MSGenError("\((file.path as NSString).lastPathComponent) is a \(config.architecture.rawValue) model; classify needs a classifier (ms-trans-encoder)")
    }
    return try MSTransEncoder(config: config, tensors: try file.load())
}
