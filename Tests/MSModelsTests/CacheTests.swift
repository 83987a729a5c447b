import Foundation
import MSFormat
import Testing

@testable import MSModels

/// What a cache holds, for comparing two caches.
func state(_ c: DecoderCache) -> [Float] {
    if let c = c as? CSTCache { return c.state }
    if let c = c as? KVCache { return c.state }
    if let c = c as? MultiScaleCache { return c.state }
    if let c = c as? RetinaCache { return c.state }
    Issue.record("unknown cache \(type(of: c))")
    return []
}

/// Chunked prefill and the batched step against token-by-token decoding: the same logits
/// and the same cache state, whatever the chunking or the batch.
struct CacheTests {
    static let fixtures = DecoderTests.fixtures

    /// The fixture's tokens, cycled to 2·context + 3 for CST (past its context, where the
    /// summaries roll) and retina (twice its reach, where the oldest blocks roll off), and
    /// cut to the context for the baseline.
    static func sequence(_ g: Golden, _ model: LanguageModel) -> [Int] {
        let n = model.canDecodePastContext ? 2 * g.config.context + 3 : min(g.ids.count, g.config.context)
        return (0..<n).map { g.ids[$0 % g.ids.count] }
    }

    /// Token-by-token logits (all rows) and the cache after every token.
    static func oneByOne(_ model: LanguageModel, _ ids: [Int]) -> (logits: [Float], cache: DecoderCache) {
        let cache = model.makeCache()
        var logits: [Float] = []
        for id in ids { logits += model.step(id, cache: cache) }
        return (logits, cache)
    }

    @Test(arguments: fixtures)
    func chunkedPrefillEqualsTokenByToken(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let ids = Self.sequence(g, model)
        let reference = Self.oneByOne(model, ids)
        // CST: around a slice; multi-scale and retina: around the coarsest block (chunks
        // that end mid-block, on it and past it)
        let L =
            (try? CSTConfig(ConfigReader(g.json)).sliceLength)
            ?? (try? RetinaConfig(ConfigReader(g.json))).map { $0.sliceLength * $0.slicesPerBlock($0.levels) }
            ?? (try? MultiScaleConfig(ConfigReader(g.json), architecture: g.config.architecture)).map { $0.blockSize($0.scales - 1) } ?? 4
        let N = g.config.context
        for chunk in Set([1, 2, 3, L - 1, L, L + 1, N, ids.count]).filter({ $0 >= 1 }).sorted() {
            let cache = model.makeCache()
            var logits: [Float] = []
            try model.prefill(chunked: ids, cache: cache, chunk: chunk) { rows, _ in logits += rows }
            #expect(cache.position == ids.count)
            #expect(maxError(logits[...], reference.logits[...]) < 1e-5, "chunks of \(chunk): logits")
            let a = state(cache), b = state(reference.cache)
            #expect(a.count == b.count && maxError(a[...], b[...]) < 1e-5, "chunks of \(chunk): cache state")
        }
    }

    /// Uneven chunks from any position, including one that starts mid-slice right after a
    /// single step, leave the same state as one token at a time.
    @Test(arguments: fixtures)
    func unevenChunksFromAnyPosition(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let ids = Self.sequence(g, model)
        let reference = Self.oneByOne(model, ids)
        let cache = model.makeCache()
        var logits = model.step(ids[0], cache: cache)
        var at = 1, sizes = [3, 1, 5, 2, 7, 4]
        while at < ids.count {
            let n = min(sizes.first!, ids.count - at)
            sizes.append(sizes.removeFirst())
            logits += try model.prefill(Array(ids[at..<(at + n)]), cache: cache, logitsFor: 0..<n)
            at += n
        }
        #expect(maxError(logits[...], reference.logits[...]) < 1e-5)
        let a = state(cache), b = state(reference.cache)
        #expect(a.count == b.count && maxError(a[...], b[...]) < 1e-5)
    }

    /// One batched step over sequences at different positions (some completing a slice,
    /// some past the context for CST) equals each sequence's own single step.
    @Test(arguments: fixtures)
    func batchedStepEqualsSingleSteps(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let ids = Self.sequence(g, model)
        let starts = [0, 1, 3, 4, 7, 11, ids.count - 1].filter { $0 < ids.count }
        func caches() throws -> [DecoderCache] {
            try starts.map { n in
                let c = model.makeCache()
                _ = try model.prefill(Array(ids[0..<n]), cache: c, logitsFor: 0..<0)
                return c
            }
        }
        let tokens = starts.map { ids[$0] }
        let batch = try caches(), single = try caches()
        let batched = model.step(tokens, caches: batch)
        let V = g.config.vocabSize
        for (i, c) in single.enumerated() {
            let one = model.step(tokens[i], cache: c)
            #expect(maxError(batched[(i * V)..<((i + 1) * V)], one[...]) < 1e-5, "sequence \(i) at \(starts[i])")
            let a = state(batch[i]), b = state(c)
            #expect(a.count == b.count && maxError(a[...], b[...]) < 1e-5, "sequence \(i): cache state")
            #expect(batch[i].position == starts[i] + 1)
        }
    }

    /// A CST prompt longer than the context prefills (summaries roll as in decoding) and
    /// its last logits equal token-by-token decoding's.
    @Test func cstPrefillsPastTheContext() throws {
        let g = try Golden("cst_a2_shared_untied_past_context")
        let model = try decoder(g)
        #expect(g.ids.count > g.config.context)
        let logits = try model.prefill(g.ids, cache: model.makeCache(), logitsFor: 0..<g.ids.count)
        let V = g.config.vocabSize
        #expect(maxError(logits[...], g.logits[0..<(g.ids.count * V)]) < 1e-4)
    }
}
