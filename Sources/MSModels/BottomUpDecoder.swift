import MSFormat
import MSKernels

/// The bottom-up multi-scale decoder (README.md beside this file,
/// "Multi-scale decoders"): fine to coarse, then aggregate. The tokens go through scale
/// 0's blocks; each coarser scale runs its blocks over the means of k complete rows of the
/// scale below; every token then adds A_s·(newest complete row of scale s) + a_s for each
/// coarser scale and goes through `agg_layers` more token-level blocks.
public final class BottomUpDecoder: LanguageModel, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "bottom-up-decoder",
        describe: {
            let c = try MultiScaleConfig($0, architecture: "bottom-up-decoder")
            return "bottom-up, \(c.summary); \(c.aggLayers) aggregation layers"
        },
        build: { try BottomUpDecoder(MultiScaleConfig($0, architecture: "bottom-up-decoder"), $1) })

    public let configuration: MultiScaleConfig
    public var config: CommonConfig { configuration.common }
    /// Learned absolute positions at every scale: nothing past N.
    public var canDecodePastContext: Bool { false }
    let D, k, S, N: Int
    let embedding: Embedding
    let scales: [Scale]
    /// `agg.{s}` for s = 1 … S−1 (index s − 1), then the blocks `agg_layers.{i}.`.
    let agg: [Linear]
    let aggStack: BlockStack
    let output: OutputHead

    public init(_ c: MultiScaleConfig, _ w: Weights) throws {
        configuration = c
        D = c.common.dModel; k = c.poolFactor; S = c.scales; N = c.maxPositions
        let D = D
        embedding = try Embedding(w, config: c.common)
        scales = try (0..<c.scales).map { try Scale(w, c, $0) }
        agg = try (1..<max(c.scales, 1)).map { try w.linear("agg.\($0)", out: D, in: D) }
        aggStack = try BlockStack(w, prefix: "agg_layers.", count: c.aggLayers, config: c.common)
        output = try OutputHead(w, config: c.common, embedding: embedding)
    }

    public func makeCache() -> DecoderCache { MultiScaleCache(scales: scales, agg: aggStack, config: configuration) }

    // MARK: - Many tokens of one sequence (prefill, scoring)

    /// Runs T tokens after the cache's position p in one pass: the T token rows through
    /// scale 0; each coarser scale, upward, over the rows the chunk completes; then the
    /// aggregation and its blocks over the T rows. Leaves the state decoding one by one would.
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        let c = own(cache, as: MultiScaleCache.self)
        try checkPrefill(tokens, at: c.position)
        let T = tokens.count, p0 = c.position, D = D
        guard T > 0 else { return [] }
        let y0 = Floats(count: T * D, zeroed: false)
        embedding(tokens, into: y0.p)
        scales[0].addPositions(y0.p, rows: T, first: p0)
        scales[0].stack.forward(y0.p, rows: T, start: p0, state: c.scales[0].kv)
        c.scales[0].rows += T
        var below = FreshRows(first: p0, rows: y0, count: T, before: Floats(count: D))
        var fresh: [FreshRows] = []
        for s in 1..<max(S, 1) {
            below = advance(scale: s, c.scales[s], below: below)
            fresh.append(below)
        }
        // h = y0 + Σ_s (Up_{s→0}(y^s)·A_sᵀ + a_s), the bias even where Up is 0.
        let h = Floats(count: T * D, zeroed: false), up = Floats(count: T * D)
        h.p.update(from: y0.p, count: T * D)
        for s in 1..<max(S, 1) {
            up.zero()
            fresh[s - 1].addUp(into: up.p, rows: T, first: p0, factor: configuration.blockSize(s))
            agg[s - 1].apply(up.p, rows: T, into: h.p, accumulate: true)
        }
        aggStack.forward(h.p, rows: T, start: p0, state: c.agg)
        c.position += T
        let rows = logitsFor.clamped(to: 0..<T)
        return output.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    /// The rows of scale s that the new rows of scale s−1 complete: each the mean of k of
    /// them (the open block's earlier ones are in the cache's sum), plus its position;
    /// then through the scale's blocks.
    func advance(scale s: Int, _ st: MultiScaleCache.ScaleState, below: FreshRows) -> FreshRows {
        let D = D
        let n = (below.first + below.count) / k - st.rows
        let z = Floats(count: max(n, 1) * D, zeroed: false)
        var made = 0
        for m in 0..<below.count {
            Kernels.add(below.rows.row(m, D), into: st.sum.p, count: D)
            if (below.first + m + 1) % k == 0 { st.closeBlock(count: k, into: z.row(made, D)); made += 1 }
        }
        scales[s].addPositions(z.p, rows: n, first: st.rows)
        scales[s].stack.forward(z.p, rows: n, start: st.rows, state: st.kv)
        return st.append(z, count: n, D: D)
    }

    // MARK: - One token of each of several sequences

    /// §8 "Decoding": the token rows through scale 0; then, upward, each scale whose block
    /// the new row of the scale below completes (one batched pass per scale over the
    /// sequences that advance it); then each token's aggregation and the agg blocks.
    public func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        let B = tokens.count, D = D
        precondition(caches.count == B, "step: \(B) tokens for \(caches.count) caches")
        precondition(tokens.allSatisfy { $0 >= 0 && $0 < config.vocabSize }, "step: token id out of range")
        let cs = caches.map { own($0, as: MultiScaleCache.self) }
        precondition(cs.allSatisfy { $0.position < N }, "a bottom-up decoder cannot decode past its context")
        let y0 = Floats(count: B * D, zeroed: false)
        embedding(tokens, into: y0.p)
        for (i, c) in cs.enumerated() { Kernels.add(scales[0].pos.row(c.position, D), into: y0.row(i, D), count: D) }
        scales[0].stack.step(y0.p, positions: cs.map(\.position), states: cs.map { $0.scales[0].kv })
        for c in cs { c.scales[0].rows += 1 }
        // Upward: `active` are the sequences whose scale s−1 just made a row, in `rows`.
        var active = Array(cs.indices), rows = y0
        for s in 1..<max(S, 1) {
            guard !active.isEmpty else { break }
            for (m, i) in active.enumerated() { Kernels.add(rows.row(m, D), into: cs[i].scales[s].sum.p, count: D) }
            let next = active.filter { cs[$0].scales[s - 1].rows % k == 0 }
            let z = Floats(count: max(next.count, 1) * D, zeroed: false)
            for (m, i) in next.enumerated() {
                let st = cs[i].scales[s]
                st.closeBlock(count: k, into: z.row(m, D))
                Kernels.add(scales[s].pos.row(st.rows, D), into: z.row(m, D), count: D)
            }
            scales[s].stack.step(z.p, positions: next.map { cs[$0].scales[s].rows }, states: next.map { cs[$0].scales[s].kv })
            for (m, i) in next.enumerated() {
                let st = cs[i].scales[s]
                st.newest.p.update(from: z.row(m, D), count: D)
                st.rows += 1
            }
            (active, rows) = (next, z)
        }
        // Each token adds A_s·(newest row of scale s, or 0) + a_s.
        let h = Floats(count: B * D, zeroed: false), up = Floats(count: B * D)
        h.p.update(from: y0.p, count: B * D)
        for s in 1..<max(S, 1) {
            up.zero()
            for (i, c) in cs.enumerated() where c.scales[s].rows > 0 { up.row(i, D).update(from: c.scales[s].newest.p, count: D) }
            agg[s - 1].apply(up.p, rows: B, into: h.p, accumulate: true)
        }
        aggStack.step(h.p, positions: cs.map(\.position), states: cs.map(\.agg))
        for c in cs { c.position += 1 }
        return output.logits(h.p, rows: B)
    }
}
