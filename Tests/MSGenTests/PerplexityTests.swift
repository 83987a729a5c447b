import Foundation
import MSFormat
import MSModels
import MSTokenizer
import Testing

@testable import MSGen

/// `msgen perplexity` against the PyTorch reference (Tests/Fixtures/perplexity, made by
/// tools/msgen_tools/make_perplexity_fixtures.py in float64).
struct PerplexityTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    struct Case: Decodable { let model: String; let context: Int; let stride: Int; let tokens: Int; let nll: Double; let bits_per_byte: Double }
    static let cases = try! JSONDecoder().decode([Case].self, from: Data(contentsOf: fixtures.appendingPathComponent("perplexity/expected.json")))
    static let text = try! String(contentsOf: fixtures.appendingPathComponent("perplexity/psalm.txt"), encoding: .utf8)

    static func load(_ name: String, dtype: DType? = nil) throws -> (LanguageModel, BPETokenizer) {
        let ckpt = try Checkpoint.load(path: fixtures.appendingPathComponent("golden/\(name)").path)
        var tensors = Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) })
        if let dtype { tensors = tensors.mapValues { $0.canQuantize || dtype != .q8 ? $0.converted(to: dtype) : $0 } }
        let model = try Architectures.languageModel(config: ckpt.configJSON, tensors: tensors)
        return (model, try BPETokenizer(json: ckpt.tokenizerJSON!))
    }

    @Test(arguments: cases.indices)
    func matchesTheReference(_ i: Int) throws {
        let c = Self.cases[i]
        let (model, tok) = try Self.load(c.model)
        let r = try Scorer(model: model, tokenizer: tok).score(tok.encode(Self.text), context: c.context, stride: c.stride)
        #expect(r.count == c.tokens)
        #expect(abs(r.nll - c.nll) / c.nll <= 1e-4, "\(c.model) C=\(c.context) S=\(c.stride): \(r.nll) vs \(c.nll)")
        #expect(abs(r.bitsPerByte - c.bits_per_byte) / c.bits_per_byte <= 1e-4)
    }

    @Test func everyTokenButTheFirstIsScoredOnce() {
        for n in [2, 3, 10, 33, 100, 257] {
            for c in [2, 3, 8, 32] {
                for s in Set([1, c / 2, c - 1].filter { $0 >= 1 }) {
                    var scored = [Int](repeating: 0, count: n)
                    for w in Scorer.windows(tokens: n, context: c, stride: s) {
                        #expect(w.end - w.start <= c && w.start < w.first && w.first < w.end)
                        for p in w.first..<w.end { scored[p] += 1 }
                    }
                    #expect(scored[0] == 0 && scored.dropFirst().allSatisfy { $0 == 1 }, "n \(n) c \(c) s \(s)")
                }
            }
        }
    }

    @Test(arguments: ["cst_a3_shared_untied_gelutanh_full", "transformer_untied_gelutanh"])
    func streamEqualsWindowsWhileTheTextFits(_ name: String) throws {
        let (model, tok) = try Self.load(name)
        let ids = Array(tok.encode(Self.text).prefix(model.config.context))
        let scorer = Scorer(model: model, tokenizer: tok)
        let windows = try scorer.score(ids, context: model.config.context, stride: model.config.context - 1)
        let stream = try scorer.score(ids, context: model.config.context, stride: 1, stream: true)
        #expect(stream.count == windows.count && abs(stream.nll - windows.nll) / windows.nll < 1e-5)
    }

    @Test(arguments: ["cst_a3_shared_untied_gelutanh_full", "transformer_untied_gelutanh"])
    func windowsOnSeveralThreadsEqualOneAtATime(_ name: String) throws {
        let (model, tok) = try Self.load(name)
        let ids = tok.encode(Self.text), scorer = Scorer(model: model, tokenizer: tok)
        let c = model.config.context, s = c / 2 + 1  // several windows, not a multiple of 3
        #expect(Scorer.windows(tokens: ids.count, context: c, stride: s).count % 3 != 0)
        let one = try scorer.score(ids, context: c, stride: s, base: model, threads: 1)
        let three = try scorer.score(ids, context: c, stride: s, base: model, threads: 3)
        #expect(three.tokens.map(\.pos) == one.tokens.map(\.pos) && three.bytes == one.bytes)
        #expect(zip(one.tokens, three.tokens).allSatisfy { abs($0.logprob - $1.logprob) < 1e-5 })
        #expect(three.kl.count == one.kl.count && three.sameTop == one.sameTop)
    }

    /// `--stream` in batched chunks gives what feeding the text one token at a time through
    /// the rolling cache gives (the old way), far past the context, KL path included.
    @Test func streamPastTheContextEqualsTokenByToken() throws {
        let (model, tok) = try Self.load("cst_a2_shared_untied_past_context")
        let ids = tok.encode(Self.text)
        #expect(ids.count > 10 * model.config.context)  // many chunks, far past the context
        let r = try Scorer(model: model, tokenizer: tok).score(ids, context: 16, stride: 15, stream: true, base: model)
        let cache = model.makeCache(), V = model.config.vocabSize
        var logprobs: [Double] = []
        for i in 0..<(ids.count - 1) {
            let logits = model.step(ids[i], cache: cache)
            let m = Double(logits.max()!)
            logprobs.append(Double(logits[ids[i + 1]]) - m - log(logits.reduce(0.0) { $0 + exp(Double($1) - m) }))
        }
        #expect(r.count == ids.count - 1 && r.tokens.map(\.pos) == Array(1..<ids.count))
        let nll = -logprobs.reduce(0, +)
        #expect(abs(r.nll - nll) / nll < 1e-4, "stream \(r.nll), one by one \(nll)")
        #expect(zip(r.tokens, logprobs).allSatisfy { abs($0.logprob - $1) < 1e-4 })
        #expect(r.kl.count == r.count && r.kl.allSatisfy { $0 < 1e-9 } && V == 300)
    }

    @Test func klAgainstItselfIsZeroAndAgainstQ8SmallAndPositive() throws {
        // d_model 32: its matrices have whole q8 blocks.
        let (model, tok) = try Self.load("cst_a2_separate_untied_gelutanh")
        let (q8, _) = try Self.load("cst_a2_separate_untied_gelutanh", dtype: .q8)
        let ids = Array(tok.encode(Self.text).prefix(200))
        let same = try Scorer(model: model, tokenizer: tok).score(ids, context: 32, stride: 31, base: model)
        #expect(
            same.kl.allSatisfy { $0 < 1e-9 } && same.sameTop == same.count, "max KL \(same.kl.max() ?? 0), same top \(same.sameTop)/\(same.count)")
        let quant = try Scorer(model: q8, tokenizer: tok).score(ids, context: 32, stride: 31, base: model)
        let mean = quant.kl.reduce(0, +) / Double(quant.kl.count)
        #expect(mean > 1e-7 && mean < 0.01, "KL \(mean)")
        #expect(Double(quant.sameTop) / Double(quant.count) > 0.9)
    }
}
