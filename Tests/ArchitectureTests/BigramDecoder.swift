import MSFormat
import MSKernels
import MSModels

/// A toy architecture defined outside MSModels, in one file, to prove that the registry
/// is the only seam: a bigram model whose next-token logits are lm_head · embed[token].
/// Its config keys are the common ones; its cache holds only the position.
final class BigramDecoder: LanguageModel, @unchecked Sendable {
    static let architecture = Architecture(
        languageModel: "bigram-decoder",
        describe: { "bigram: context \(try BigramDecoder.Config($0).common.context) tokens" },
        build: { try BigramDecoder(Config($0), $1) })

    struct Config {
        var common: CommonConfig
        init(_ r: ConfigReader) throws {
            common = try CommonConfig(r, architecture: "bigram-decoder")
            common.context = try r.int("max_positions")
        }
    }

    final class Cache: DecoderCache {
        var position = 0
        var byteCount: Int { 8 }
    }

    let config: CommonConfig
    var canDecodePastContext: Bool { true }
    let embed: Floats
    let head: Linear

    init(_ c: Config, _ w: Weights) throws {
        config = c.common
        embed = try w.tensor("embed.weight", [c.common.vocabSize, c.common.dModel])
        head = try w.linear("lm_head", out: c.common.vocabSize, in: c.common.dModel, bias: false)
    }

    func makeCache() -> DecoderCache { Cache() }

    func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float] {
        try checkPrefill(tokens, at: cache.position)
        own(cache, as: Cache.self).position += tokens.count
        let rows = Array(tokens[logitsFor.clamped(to: 0..<tokens.count)])
        return logits(rows)
    }

    func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float] {
        for c in caches { own(c, as: Cache.self).position += 1 }
        return logits(tokens)
    }

    func logits(_ tokens: [Int]) -> [Float] {
        let D = config.dModel
        let x = Floats(count: max(tokens.count, 1) * D)
        for (i, t) in tokens.enumerated() { x.row(i, D).update(from: embed.row(t, D), count: D) }
        return head(x.p, rows: tokens.count).array
    }
}
