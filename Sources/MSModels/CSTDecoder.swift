import MSFormat
import MSKernels

/// config.json of a cst-decoder: the common keys, the layer count, and the slicing.
public struct CSTConfig: ArchitectureConfig, Equatable {
    public var common: CommonConfig
    public var nLayers: Int
    /// L, α, G: slices of L tokens, each extended E = (α−1)·L/2 tokens to the left; G
    /// slices make the context.
    public var sliceLength: Int
    public var extensionRatio: Int
    public var maxSlices: Int
    /// Whether the global attention reuses the local Wq, Wk, Wv (the paper's default).
    public var sharedLocalGlobal: Bool

    public var leftExtension: Int { (extensionRatio - 1) * sliceLength / 2 }

    public init(_ r: ConfigReader) throws {
        common = try CommonConfig(r, architecture: "cst-decoder")
        nLayers = try r.int("n_layers")
        sliceLength = try r.int("slice_length")
        extensionRatio = try r.int("extension_ratio")
        maxSlices = try r.int("max_slices")
        sharedLocalGlobal = try r.bool("shared_local_global", default: true)
        try check((1...3).contains(extensionRatio), "config 'extension_ratio' must be 1, 2 or 3, not \(extensionRatio)")
        try check(
            (extensionRatio - 1) * sliceLength % 2 == 0,
            "config: the left extension (α−1)·L/2 = (\(extensionRatio)−1)·\(sliceLength)/2 is not an integer")
        common.context = maxSlices * sliceLength
    }
}

/// The causal Composite Slice Transformer (README.md beside this file, "CST decoder").
///
/// Each layer: local attention inside the token's slice, left-extended by E tokens;
/// global attention of the slice over the summaries (mean local outputs) of the slices
/// before it; their sum through Wo; then the MLP. Positions enter only through the
/// query and key projections (MS-VIPE), and since projections are linear their positional
/// parts P·Wᵀ are computed once, at load.
public final class CSTDecoder: SliceDecoder, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "cst-decoder",
        describe: {
            let c = try CSTConfig($0)
            return "context \(c.common.context) tokens = \(c.maxSlices) slices × \(c.sliceLength); left extension \(c.leftExtension)"
        },
        build: { try CSTDecoder(CSTConfig($0), $1) })

    public let configuration: CSTConfig
    public var config: CommonConfig { configuration.common }
    public var canDecodePastContext: Bool { true }
    let D, H, dh, L, E, G: Int
    /// The longest local window, E + L: also the length of the key/value ring.
    var W: Int { E + L }
    let scale: Float
    let embedding: Embedding
    let layers: [Layer]
    let output: OutputHead

    struct Layer: SliceLayer {
        let parts: SliceLayerParts
        let pgQ, pgK: Floats  // P_g·Wgqᵀ, P_g·Wgkᵀ [G, D]
    }

    public init(_ c: CSTConfig, _ w: Weights) throws {
        configuration = c
        D = c.common.dModel; H = c.common.nHeads; dh = c.common.dHead
        L = c.sliceLength; E = c.leftExtension; G = c.maxSlices
        scale = 1 / Float(dh).squareRoot()
        let (D, E, L, G) = (D, E, L, G)
        embedding = try Embedding(w, config: c.common)
        let pl = try w.tensor("pos_local.weight", [E + L, D]), pg = try w.tensor("pos_global.weight", [G, D])
        layers = try (0..<c.nLayers).map { i in
            let parts = try SliceLayerParts(
                w, layer: i, config: c.common, sharedLocalGlobal: c.sharedLocalGlobal, localPositions: pl, sliceLength: L, leftExtension: E)
            // Positional parts of the projections, without bias: (u + P)·Wᵀ + b = u·Wᵀ + b + P·Wᵀ.
            let g = parts.globalQKV
            return Layer(parts: parts, pgQ: g.rows(0..<D).withoutBias(pg.p, rows: G), pgK: g.rows(D..<(2 * D)).withoutBias(pg.p, rows: G))
        }
        output = try OutputHead(w, config: c.common, embedding: embedding)
    }

    typealias Cache = CSTCache
    public func makeCache() -> DecoderCache { CSTCache(self) }

    // MARK: - Global attention over slice summaries

    /// The global output g for the slice that follows a layer's kept summaries: its query
    /// is the newest summary, its keys all of them, each with the P_g row of its place in
    /// the list. `keys` holds (G+1)·D floats of scratch, `scores` G.
    func globalAttention(
        _ l: Layer, _ s: CSTCache.LayerState, keys: UnsafeMutablePointer<Float>,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        let c = s.count, rows = s.summaries.p
        guard c > 0 else { out.update(repeating: 0, count: D); return }
        let q = keys + c * D  // scratch past the keys
        Kernels.sum(rows + (c - 1) * 3 * D, l.pgQ.row(c - 1, D), into: q, count: D)
        for i in 0..<c { Kernels.sum(rows + i * 3 * D + D, l.pgK.row(i, D), into: keys + i * D, count: D) }
        for h in 0..<H {
            Kernels.attend(
                query: q + h * dh, keys: keys + h * dh, keyStride: D, values: rows + 2 * D + h * dh,
                valueStride: 3 * D, count: c, headDim: dh, scale: scale, scores: scores, into: out + h * dh)
        }
    }

    // MARK: - Many tokens of one sequence (prefill, scoring, streaming)

    /// Runs T tokens after the cache's position in one pass (SliceDecoder.slicePrefill).
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        try slicePrefill(tokens, cache: own(cache, as: CSTCache.self), logitsFor: logitsFor)
    }

    // MARK: - One token of each of several sequences (decoding, serving)

    public func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        sliceStep(tokens, caches.map { own($0, as: CSTCache.self) })
    }

    /// CST's global part: the completed slice's summary joins the kept ones (the oldest
    /// rolls off past G−1), and the next slice's g is attention over them.
    func completeSlice(_ l: Layer, _ s: CSTCache.LayerState, slice: Int, summary: UnsafePointer<Float>, projections: UnsafePointer<Float>) {
        s.push(projections)
        let keys = Floats(count: (G + 1) * D, zeroed: false), scores = Floats(count: G, zeroed: false)
        globalAttention(l, s, keys: keys.p, scores: scores.p, into: s.g.p)
    }
}

/// The bounded per-sequence state of a CST (README.md, "CST decoder: the cache"): per
/// layer, the raw keys and values of the last E+L tokens (a ring), the running sum of the
/// current slice's local outputs, the [gq | gk | gv] projections of the last G−1 slice
/// summaries, and the current slice's global output. Its size does not depend on how many
/// tokens have gone through. It holds state only; the model does the math.
final class CSTCache: SliceCache {
    var position = 0
    let layers: [LayerState]
    let D: Int, W: Int, capacity: Int

    final class LayerState: SliceState {
        let k, v: Floats  // ring of raw keys/values, row p mod (E+L)
        let sliceSum: Floats  // Σ a over the current slice
        let summaries: Floats  // [gq | gk | gv] of kept summaries, oldest first
        var count = 0  // kept summaries (≤ G−1)
        let g: Floats  // the current slice's global output
        let D: Int, capacity: Int  // G−1
        init(D: Int, W: Int, capacity: Int) {
            k = Floats(count: W * D); v = Floats(count: W * D); sliceSum = Floats(count: D)
            summaries = Floats(count: max(capacity, 1) * 3 * D); g = Floats(count: D)
            self.D = D; self.capacity = capacity
        }

        /// Appends a summary's projections, dropping the oldest when G−1 are kept: past the
        /// context the kept summaries are re-indexed 0…G−2 simply by their place in this list.
        func push(_ row: UnsafePointer<Float>) {
            guard capacity > 0 else { return }
            if count == capacity {
                summaries.p.update(from: summaries.p + 3 * D, count: (capacity - 1) * 3 * D)
                count -= 1
            }
            summaries.row(count, 3 * D).update(from: row, count: 3 * D)
            count += 1
        }
    }

    init(_ m: CSTDecoder) {
        D = m.D; W = m.W; capacity = m.G - 1
        layers = (0..<m.configuration.nLayers).map { _ in LayerState(D: m.D, W: m.W, capacity: m.G - 1) }
    }

    var byteCount: Int {
        let perLayer = (2 * W * D + D + max(capacity, 1) * 3 * D + D) * 4
        return layers.count * perLayer
    }

    /// Everything the state holds that later tokens read, for tests comparing two caches:
    /// the ring rows of the last min(position, E+L) tokens, the slice sum, the kept
    /// summaries and g, layer by layer.
    var state: [Float] {
        var out: [Float] = []
        for s in layers {
            for j in max(0, position - W)..<position {
                out += UnsafeBufferPointer(start: s.k.row(j % W, D), count: D)
                out += UnsafeBufferPointer(start: s.v.row(j % W, D), count: D)
            }
            out += s.sliceSum.array + Array(UnsafeBufferPointer(start: s.summaries.p, count: s.count * 3 * D)) + s.g.array
        }
        return out
    }
}
