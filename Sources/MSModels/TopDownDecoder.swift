import MSFormat
import MSKernels

/// The top-down multi-scale decoder (README.md beside this file,
/// "Multi-scale decoders"): coarse to fine. Scale s (from the coarsest down to 1) reads
/// each complete block's mean token embedding plus the newest complete row of the scale
/// above it; the tokens read the newest complete row of scale 1. Every scale is a stack
/// of §2's blocks over its own rows, with its own learned positions and KV cache.
public final class TopDownDecoder: LanguageModel, LoadableModel, @unchecked Sendable {
    public static let architecture = Architecture(
        languageModel: "top-down-decoder",
        describe: { "top-down, " + (try MultiScaleConfig($0, architecture: "top-down-decoder")).summary },
        build: { try TopDownDecoder(MultiScaleConfig($0, architecture: "top-down-decoder"), $1) })

    public let configuration: MultiScaleConfig
    public var config: CommonConfig { configuration.common }
    /// Learned absolute positions at every scale: nothing past N.
    public var canDecodePastContext: Bool { false }
    let D, k, S, N: Int
    let embedding: Embedding
    let scales: [Scale]
    let output: OutputHead

    public init(_ c: MultiScaleConfig, _ w: Weights) throws {
        configuration = c
        D = c.common.dModel; k = c.poolFactor; S = c.scales; N = c.maxPositions
        embedding = try Embedding(w, config: c.common)
        scales = try (0..<c.scales).map { try Scale(w, c, $0) }
        output = try OutputHead(w, config: c.common, embedding: embedding)
    }

    public func makeCache() -> DecoderCache { MultiScaleCache(scales: scales, agg: nil, config: configuration) }

    // MARK: - Many tokens of one sequence (prefill, scoring)

    /// Runs T tokens after the cache's position p in one pass: each coarse scale, coarsest
    /// first, makes the rows the chunk completes (one batched pass through its blocks);
    /// then the T token rows read them. Leaves the state decoding one by one would.
    public func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        let c = own(cache, as: MultiScaleCache.self)
        try checkPrefill(tokens, at: c.position)
        let T = tokens.count, p0 = c.position, D = D
        guard T > 0 else { return [] }
        let h = Floats(count: T * D, zeroed: false)
        embedding(tokens, into: h.p)
        var above: FreshRows?
        for s in stride(from: S - 1, to: 0, by: -1) {
            above = advance(scale: s, c.scales[s], embeddings: h, rows: T, from: p0, above: above)
        }
        // The token rows, in place over the embeddings (the coarse scales have read them).
        scales[0].addPositions(h.p, rows: T, first: p0)
        above?.addUp(into: h.p, rows: T, first: p0, factor: k)
        scales[0].stack.forward(h.p, rows: T, start: p0, state: c.scales[0].kv)
        c.scales[0].rows += T
        c.position += T
        let rows = logitsFor.clamped(to: 0..<T)
        return output.logits(h.row(rows.lowerBound, D), rows: rows.count)
    }

    /// The rows of scale s that tokens p0 ..< p0+T complete: each the mean of its block's
    /// b_s embeddings (the open block's earlier ones are in the cache's sum), plus its
    /// position, plus Up of the scale above; then through the scale's blocks.
    func advance(
        scale s: Int, _ st: MultiScaleCache.ScaleState, embeddings e: Floats, rows T: Int, from p0: Int,
        above: FreshRows?
    ) -> FreshRows {
        let b = configuration.blockSize(s), D = D
        let n = (p0 + T) / b - st.rows
        let z = Floats(count: max(n, 1) * D, zeroed: false)
        var made = 0
        for j in 0..<T {
            Kernels.add(e.row(j, D), into: st.sum.p, count: D)
            if (p0 + j + 1) % b == 0 { st.closeBlock(count: b, into: z.row(made, D)); made += 1 }
        }
        scales[s].addPositions(z.p, rows: n, first: st.rows)
        above?.addUp(into: z.p, rows: n, first: st.rows, factor: k)
        scales[s].stack.forward(z.p, rows: n, start: st.rows, state: st.kv)
        return st.append(z, count: n, D: D)
    }

    // MARK: - One token of each of several sequences

    /// §8 "Decoding": embed each token; then each scale whose block the token completes,
    /// coarsest first (one batched pass per scale over the sequences that advance it);
    /// then the token rows, which read the newest row of scale 1.
    public func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        let B = tokens.count, D = D
        precondition(caches.count == B, "step: \(B) tokens for \(caches.count) caches")
        precondition(tokens.allSatisfy { $0 >= 0 && $0 < config.vocabSize }, "step: token id out of range")
        let cs = caches.map { own($0, as: MultiScaleCache.self) }
        precondition(cs.allSatisfy { $0.position < N }, "a top-down decoder cannot decode past its context")
        let e = Floats(count: B * D, zeroed: false)
        embedding(tokens, into: e.p)
        for s in stride(from: S - 1, to: 0, by: -1) {
            let b = configuration.blockSize(s)
            for (i, c) in cs.enumerated() { Kernels.add(e.row(i, D), into: c.scales[s].sum.p, count: D) }
            let done = cs.indices.filter { (cs[$0].position + 1) % b == 0 }
            guard !done.isEmpty else { continue }
            let z = Floats(count: done.count * D, zeroed: false)
            for (m, i) in done.enumerated() {
                let st = cs[i].scales[s]
                st.closeBlock(count: b, into: z.row(m, D))
                Kernels.add(scales[s].pos.row(st.rows, D), into: z.row(m, D), count: D)
                // Up: the scale above advanced first, so its newest row is the one this row may read.
                if s < S - 1, cs[i].scales[s + 1].rows > 0 { Kernels.add(cs[i].scales[s + 1].newest.p, into: z.row(m, D), count: D) }
            }
            scales[s].stack.step(z.p, positions: done.map { cs[$0].scales[s].rows }, states: done.map { cs[$0].scales[s].kv })
            for (m, i) in done.enumerated() {
                let st = cs[i].scales[s]
                st.newest.p.update(from: z.row(m, D), count: D)
                st.rows += 1
            }
        }
        for (i, c) in cs.enumerated() {
            Kernels.add(scales[0].pos.row(c.position, D), into: e.row(i, D), count: D)
            if S > 1, c.scales[1].rows > 0 { Kernels.add(c.scales[1].newest.p, into: e.row(i, D), count: D) }
        }
        scales[0].stack.step(e.p, positions: cs.map(\.position), states: cs.map { $0.scales[0].kv })
        for c in cs { c.scales[0].rows += 1; c.position += 1 }
        return output.logits(e.p, rows: B)
    }
}
