import MSFormat
import MSKernels

/// config.json of a retina-decoder (README.md beside this file, "Retina decoder"): CST's
/// slicing without a context, plus M levels of summaries, each k times coarser than the
/// last, of which a slice sees the last w.
public struct RetinaConfig: ArchitectureConfig, Equatable {
    public var common: CommonConfig
    public var nLayers: Int
    public var sliceLength: Int
    public var extensionRatio: Int
    /// M, k, w: level ℓ = 1…M summarises blocks of L·k^(ℓ−1) tokens; a slice sees the last w of each level.
    public var levels: Int
    public var poolFactor: Int
    public var levelWindow: Int
    /// Whether the global attention reuses the local Wq, Wk, Wv (the paper's default).
    public var sharedLocalGlobal: Bool

    public var leftExtension: Int { (extensionRatio - 1) * sliceLength / 2 }
    /// Slices per level-ℓ block: k^(ℓ−1).
    public func slicesPerBlock(_ level: Int) -> Int { (1..<level).reduce(1) { p, _ in p * poolFactor } }
    /// About how far back a layer sees, w·L·k^(M−1) tokens. The model has no context limit;
    /// this is its default scoring window (`config.context`).
    public var reach: Int { levelWindow * sliceLength * slicesPerBlock(levels) }

    public init(_ r: ConfigReader) throws {
        common = try CommonConfig(r, architecture: "retina-decoder")
        nLayers = try r.int("n_layers")
        sliceLength = try r.int("slice_length")
        extensionRatio = try r.int("extension_ratio")
        levels = try r.int("levels")
        poolFactor = try r.int("pool_factor", min: 2)
        levelWindow = try r.int("level_window")
        sharedLocalGlobal = try r.bool("shared_local_global", default: true)
        try check((1...3).contains(extensionRatio), "config 'extension_ratio' must be 1, 2 or 3, not \(extensionRatio)")
        try check(
            (extensionRatio - 1) * sliceLength % 2 == 0,
            "config: the left extension (α−1)·L/2 = (\(extensionRatio)−1)·\(sliceLength)/2 is not an integer")
        // The reach must fit an Int (and any sane memory): w·L·k^(M−1) ≤ 2^40 tokens.
        var reach = levelWindow.multipliedReportingOverflow(by: sliceLength)
        for _ in 1..<levels where !reach.overflow { reach = reach.partialValue.multipliedReportingOverflow(by: poolFactor) }
        try check(
            !reach.overflow && reach.partialValue <= 1 << 40,
            "config: the reach level_window·slice_length·pool_factor^(levels−1) is too large (levels \(levels), pool_factor \(poolFactor))")
        common.context = reach.partialValue
    }
}

/// The retina decoder (§8 c; README.md beside this file, "Retina decoder"): CST's local
/// attention, then for each level ℓ = 1…M a global attention of the slice over the last w
/// level-ℓ summaries (mean local outputs of blocks of L·k^(ℓ−1) tokens), their keys
/// positioned by age; the levels' outputs are summed, added to the local output and go
/// through Wo, then the MLP. Positions are relative, so decoding never stops for length
/// and the per-sequence state stays the same size however long it runs.
public final class RetinaDecoder: SliceDecoder, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "retina-decoder",
        describe: {
            let c = try RetinaConfig($0)
            let blocks = (1...c.levels).map { String(c.sliceLength * c.slicesPerBlock($0)) }.joined(separator: ", ")
            return "no context limit; reach \(c.reach) tokens = \(c.levelWindow) × \(c.sliceLength) × \(c.poolFactor)^\(c.levels - 1) "
                + "(the default scoring window); \(c.levels) levels of blocks of \(blocks) tokens; left extension \(c.leftExtension)"
        },
        build: { try RetinaDecoder(RetinaConfig($0), $1) })

    public let configuration: RetinaConfig
    public var config: CommonConfig { configuration.common }
    public var canDecodePastContext: Bool { true }
    /// `perplexity` runs one pass through the bounded state unless a window is asked for.
    public var prefersStreaming: Bool { true }
    let D, H, dh, L, M, k, w: Int
    let scale: Float
    let embedding: Embedding
    let layers: [Layer]
    let output: OutputHead

    struct Layer: SliceLayer {
        let parts: SliceLayerParts
        let levelQ: [Floats]  // per level: P_ℓ[w]·Wgqᵀ  [D]
        let levelK: [Floats]  // per level: P_ℓ[age]·Wgkᵀ for age 0…w−1  [w, D]
    }

    public init(_ c: RetinaConfig, _ wt: Weights) throws {
        configuration = c
        D = c.common.dModel; H = c.common.nHeads; dh = c.common.dHead
        L = c.sliceLength; M = c.levels; k = c.poolFactor; w = c.levelWindow
        scale = 1 / Float(dh).squareRoot()
        let (D, L, w) = (D, L, w), E = c.leftExtension
        embedding = try Embedding(wt, config: c.common)
        let pl = try wt.tensor("pos_local.weight", [E + L, D])
        let pLevels = try (1...c.levels).map { try wt.tensor("pos_levels.\($0).weight", [w + 1, D]) }
        layers = try (0..<c.nLayers).map { i in
            let parts = try SliceLayerParts(
                wt, layer: i, config: c.common, sharedLocalGlobal: c.sharedLocalGlobal, localPositions: pl, sliceLength: L, leftExtension: E)
            // Positional parts of the projections, without bias: (m + P)·Wᵀ + b = m·Wᵀ + b + P·Wᵀ.
            let g = parts.globalQKV
            return Layer(
                parts: parts, levelQ: pLevels.map { g.rows(0..<D).withoutBias($0.p + w * D, rows: 1) },
                levelK: pLevels.map { g.rows(D..<(2 * D)).withoutBias($0.p, rows: w) })
        }
        output = try OutputHead(wt, config: c.common, embedding: embedding)
    }

    typealias Cache = RetinaCache
    public func makeCache() -> DecoderCache { RetinaCache(self) }

    // MARK: - The levels: what happens when a slice completes

    /// Slice t of a layer is complete with summary `m1` (= m^1_t) and its global
    /// projections `row` ([gq | gk | gv] of m1, 3D). Level 1 appends the block; each
    /// coarser level adds the finer level's new summary to its open block and, when that
    /// block has its k children, appends it too (and so on up). Then every level attends
    /// with the query m^1_t, and their sum is the next slice's g.
    func completeSlice(_ l: Layer, _ s: RetinaCache.LayerState, slice t: Int, summary m1: UnsafePointer<Float>, projections row: UnsafePointer<Float>)
    {
        let D = D
        s.push(level: 0, row + D)
        var child = m1
        let mean = Floats(count: D), kv = Floats(count: 2 * D)
        for level in 1..<M {
            Kernels.add(child, into: s.sums[level].p, count: D)
            guard (t + 1) % configuration.slicesPerBlock(level + 1) == 0 else { break }
            for i in 0..<D { mean.p[i] = s.sums[level].p[i] / Float(k) }
            s.sums[level].zero()
            l.globalQKV.rows(D..<(3 * D)).apply(mean.p, rows: 1, into: kv.p)  // raw [gk | gv], adjacent rows of the fused weight
            s.push(level: level, kv.p)
            child = UnsafePointer(mean.p)  // the next level's child: this level's new summary
        }
        levelAttention(l, s, query: row, into: s.g.p)
    }

    /// Σ_ℓ g^ℓ for the slice whose query projection (without position) is `query`: per
    /// level, over its kept blocks with the P_ℓ row of their age (0 = newest).
    func levelAttention(_ l: Layer, _ s: RetinaCache.LayerState, query: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let D = D
        let q = Floats(count: D, zeroed: false), keys = Floats(count: w * D, zeroed: false)
        let scores = Floats(count: w, zeroed: false), g = Floats(count: D, zeroed: false)
        out.update(repeating: 0, count: D)
        for level in 0..<M {
            let c = s.counts[level], blocks = s.blocks[level]
            guard c > 0 else { continue }  // no complete block of this level yet: g^ℓ = 0
            Kernels.sum(query, l.levelQ[level].p, into: q.p, count: D)
            for i in 0..<c { Kernels.sum(blocks.row(i, 2 * D), l.levelK[level].row(c - 1 - i, D), into: keys.row(i, D), count: D) }
            for h in 0..<H {
                Kernels.attend(
                    query: q.p + h * dh, keys: keys.p + h * dh, keyStride: D, values: blocks.p + D + h * dh,
                    valueStride: 2 * D, count: c, headDim: dh, scale: scale, scores: scores.p, into: g.p + h * dh)
            }
            Kernels.add(g.p, into: out, count: D)
        }
    }

    // MARK: - Many tokens of one sequence (prefill, scoring, streaming)

    /// Runs T tokens after the cache's position in one pass (SliceDecoder.slicePrefill).
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        try slicePrefill(tokens, cache: own(cache, as: RetinaCache.self), logitsFor: logitsFor)
    }

    // MARK: - One token of each of several sequences (decoding, serving)

    public func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        sliceStep(tokens, caches.map { own($0, as: RetinaCache.self) })
    }
}

/// The bounded per-sequence state of a retina decoder (README.md, "Retina decoder: the
/// cache"): per layer, the raw keys and values of the last E+L tokens (a ring); per level
/// the running sum of its open block (level 1: of the local outputs of the current slice;
/// level ℓ > 1: of its complete children's summaries) and the raw [gk | gv] projections of
/// its last w complete blocks; and Σ_ℓ g^ℓ of the current slice. Its size does not depend
/// on how many tokens have gone through. It holds state only; the model does the math.
final class RetinaCache: SliceCache {
    var position = 0
    let layers: [LayerState]
    let D: Int, W: Int, window: Int

    final class LayerState: SliceState {
        let k, v: Floats  // ring of raw keys/values, row p mod (E+L)
        let sums: [Floats]  // per level: Σ over its open block
        let blocks: [Floats]  // per level: [gk | gv] of its last w complete blocks, oldest first
        var counts: [Int]  // per level: blocks kept (≤ w)
        let g: Floats  // the current slice's Σ_ℓ g^ℓ
        /// Level 1's open block is the current slice.
        var sliceSum: Floats { sums[0] }
        let D: Int, window: Int
        init(D: Int, W: Int, levels: Int, window: Int) {
            self.D = D; self.window = window
            k = Floats(count: W * D); v = Floats(count: W * D)
            sums = (0..<levels).map { _ in Floats(count: D) }
            blocks = (0..<levels).map { _ in Floats(count: window * 2 * D) }
            counts = Array(repeating: 0, count: levels)
            g = Floats(count: D)
        }

        /// Appends a block's [gk | gv] to a level (0-based), dropping its oldest past w.
        func push(level: Int, _ row: UnsafePointer<Float>) {
            let b = blocks[level]
            if counts[level] == window {
                b.p.update(from: b.p + 2 * D, count: (window - 1) * 2 * D)
                counts[level] -= 1
            }
            b.row(counts[level], 2 * D).update(from: row, count: 2 * D)
            counts[level] += 1
        }
    }

    init(_ m: RetinaDecoder) {
        D = m.D; W = m.layers.first?.local.W ?? m.L; window = m.w
        let (D, W, M, w) = (D, W, m.M, m.w)
        layers = (0..<m.configuration.nLayers).map { _ in LayerState(D: D, W: W, levels: M, window: w) }
    }

    var byteCount: Int {
        layers.reduce(0) { total, s in
            total + (s.k.count + s.v.count + s.sums.reduce(0) { $0 + $1.count } + s.blocks.reduce(0) { $0 + $1.count } + s.g.count) * 4
        }
    }

    /// Everything the state holds that later tokens read, for tests comparing two caches:
    /// the ring rows of the last min(position, E+L) tokens, then per level its open sum
    /// and kept blocks, then g, layer by layer.
    var state: [Float] {
        var out: [Float] = []
        for s in layers {
            for j in max(0, position - W)..<position {
                out += UnsafeBufferPointer(start: s.k.row(j % W, D), count: D)
                out += UnsafeBufferPointer(start: s.v.row(j % W, D), count: D)
            }
            for (level, sum) in s.sums.enumerated() {
                out += sum.array + Array(UnsafeBufferPointer(start: s.blocks[level].p, count: s.counts[level] * 2 * D))
            }
            out += s.g.array
        }
        return out
    }
}
