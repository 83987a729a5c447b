import MSFormat
import MSKernels

/// config.json of a multi-scale decoder (README.md beside this file,
/// "Multi-scale decoders"): the common keys, S scales of k^s-token blocks with their own
/// blocks each, and the context N.
public struct MultiScaleConfig: ArchitectureConfig, Equatable {
    public var common: CommonConfig
    /// S, k, [n_0 … n_{S−1}], N; and the bottom-up's token-level blocks after aggregation
    /// (0 for top-down, which has none).
    public var scales: Int
    public var poolFactor: Int
    public var layersPerScale: [Int]
    public var aggLayers: Int
    public var maxPositions: Int

    /// b_s = k^s tokens per row of scale s.
    public func blockSize(_ s: Int) -> Int { (0..<s).reduce(1) { b, _ in b * poolFactor } }

    /// Rows scale s holds at most: N / b_s.
    public func rows(_ s: Int) -> Int { maxPositions / blockSize(s) }

    public init(_ r: ConfigReader, architecture: String) throws {
        common = try CommonConfig(r, architecture: architecture)
        scales = try r.int("scales")
        poolFactor = try r.int("pool_factor", min: 2)
        layersPerScale = try r.ints("layers_per_scale")
        aggLayers = architecture == "bottom-up-decoder" ? try r.int("agg_layers", min: 0) : 0
        maxPositions = try r.int("max_positions")
        try check(
            layersPerScale.count == scales,
            "config 'layers_per_scale' has \(layersPerScale.count) entries; it needs one per scale ('scales' is \(scales))")
        // The coarsest block, without overflowing: past N it cannot divide N anyway.
        var coarsest = 1
        for _ in 1..<max(scales, 1) where coarsest <= maxPositions { coarsest *= poolFactor }
        try check(
            maxPositions % coarsest == 0,
            "config 'max_positions' \(maxPositions) is not a multiple of pool_factor^(scales−1) = \(poolFactor)^\(scales - 1)")
        common.context = maxPositions
    }

    /// One line for `inspect`.
    var summary: String {
        let blocks = (0..<scales).map { "\(blockSize($0))" }.joined(separator: ", ")
        return "context \(maxPositions) tokens; \(scales) scales of blocks \(blocks) tokens; layers per scale \(layersPerScale)"
    }
}

/// One scale of a multi-scale decoder: its learned positions `scales.{s}.pos.weight`
/// [N/b_s, D], added once at its input, and its blocks `scales.{s}.layers.{i}.`.
struct Scale {
    let pos: Floats
    let stack: BlockStack

    init(_ w: Weights, _ c: MultiScaleConfig, _ s: Int) throws {
        pos = try w.tensor("scales.\(s).pos.weight", [c.rows(s), c.common.dModel])
        stack = try BlockStack(w, prefix: "scales.\(s).layers.", count: c.layersPerScale[s], config: c.common)
    }

    /// Adds the positions of rows first ..< first+n to x [n, D].
    func addPositions(_ x: UnsafeMutablePointer<Float>, rows n: Int, first: Int) {
        let D = stack.D
        for i in 0..<n { Kernels.add(pos.row(first + i, D), into: x + i * D, count: D) }
    }
}

/// Per-sequence state of a multi-scale decoder (§8 "Decoding"): one `ScaleState` per scale
/// and, for bottom-up, the aggregation blocks' token-level keys and values. State only.
final class MultiScaleCache: DecoderCache {
    var position = 0
    let scales: [ScaleState]
    let agg: [KVRows]
    let D: Int

    /// Scale s: its blocks' keys and values (at most N/b_s rows), how many rows it has
    /// made, the running sum of its open block's inputs (top-down: the token embeddings;
    /// bottom-up: the rows of the scale below), and its newest output row.
    final class ScaleState {
        var rows = 0
        let kv: [KVRows]
        let sum, newest: Floats

        init(kv: [KVRows], D: Int) { self.kv = kv; sum = Floats(count: D); newest = Floats(count: D) }

        /// Makes row `rows` of the scale from the open block's sum, the mean of its `count`
        /// inputs, into `out`; the block closes.
        func closeBlock(count: Int, into out: UnsafeMutablePointer<Float>) {
            let inv = 1 / Float(count)
            for i in 0..<sum.count { out[i] = sum.p[i] * inv }
            sum.zero()
        }
    }

    init(scales: [Scale], agg: BlockStack?, config c: MultiScaleConfig) {
        D = c.common.dModel
        self.scales = scales.enumerated().map { s, sc in ScaleState(kv: sc.stack.makeState(capacity: c.rows(s)), D: c.common.dModel) }
        self.agg = agg?.makeState(capacity: c.maxPositions) ?? []
    }

    /// Keys and values of every scale's rows and of the aggregation blocks, plus each
    /// scale's sum and newest row.
    var byteCount: Int {
        let kv = scales.reduce(0) { $0 + $1.kv.count * 2 * $1.rows * D * 4 } + agg.count * 2 * position * D * 4
        return kv + scales.count * 2 * D * 4
    }

    /// Everything held, for tests comparing two caches.
    var state: [Float] {
        scales.flatMap { s in s.kv.flatMap { $0.state(rows: s.rows) } + s.sum.array + (s.rows > 0 ? s.newest.array : []) }
            + agg.flatMap { $0.state(rows: position) }
    }
}

/// The rows a scale made in one prefill chunk, and the one before them: what finer rows
/// read through Up (a finer row never reads further back than the newest row made before
/// the chunk, §8's causal rule).
struct FreshRows {
    /// Index of the first new row; the new rows; the newest row before them (if any).
    let first: Int
    let rows: Floats
    let count: Int
    let before: Floats

    /// Row `c` of the scale, or nil for a negative index (Up is 0 there).
    func row(_ c: Int) -> UnsafePointer<Float>? {
        guard c >= 0 else { return nil }
        if c >= first { return UnsafePointer(rows.row(c - first, before.count)) }
        precondition(c == first - 1, "Up read row \(c), older than the newest kept (\(first - 1))")
        return UnsafePointer(before.p)
    }

    /// Adds Up of these rows (§8) to the n finer rows first ..< first+n in x, `factor`
    /// finer rows to one of these: finer row p reads row (p+1)/factor − 1, or nothing.
    func addUp(into x: UnsafeMutablePointer<Float>, rows n: Int, first: Int, factor: Int) {
        let D = before.count
        for m in 0..<n {
            if let r = row((first + m + 1) / factor - 1) { Kernels.add(r, into: x + m * D, count: D) }
        }
    }
}

extension MultiScaleCache.ScaleState {
    /// Appends `n` new rows (already through the scale's blocks) made in a prefill chunk,
    /// and returns them with the newest row before them, for the finer scales to read.
    func append(_ rows: Floats, count n: Int, D: Int) -> FreshRows {
        let before = Floats(count: D)
        before.p.update(from: newest.p, count: D)
        let fresh = FreshRows(first: self.rows, rows: rows, count: n, before: before)
        if n > 0 { newest.p.update(from: rows.row(n - 1, D), count: D) }
        self.rows += n
        return fresh
    }
}
