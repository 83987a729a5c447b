import Foundation
import MSFormat
import MSKernels
import MSModels
import MSTokenizer
import Testing

@testable import MSGen

/// The bundled CST (real trained weights) run in its stored dtypes: f16 and bf16 logits
/// against f32 within their rounding, and q8 perplexity and KL against f32, on the first
/// 16 KB of the KJV test split (Tests/Fixtures/perplexity/kjv-test-excerpt.txt).
struct DTypeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let file = try! MSZFile(path: root.appendingPathComponent("models/cst-kjv.msz").path)
    static let tensors = try! file.load()
    static let tokenizer = try! BPETokenizer(json: file.tokenizerJSON!)
    static let text = try! String(contentsOf: root.appendingPathComponent("Tests/Fixtures/perplexity/kjv-test-excerpt.txt"), encoding: .utf8)

    /// The bundled model with every tensor convert would quantise stored as `dtype`.
    static func model(_ dtype: DType) throws -> LanguageModel {
        let t = tensors.mapValues { $0.dtype == dtype || (dtype == .q8 && !$0.canQuantize) ? $0 : $0.converted(to: dtype) }
        return try Architectures.languageModel(config: file.config, tensors: t)
    }

    /// Logits of one window: f16 and bf16 weights (relative rounding 2⁻¹¹ and 2⁻⁸) move
    /// them by about that times the logits' spread. Measured on this window (1,024 tokens,
    /// logits from −24.2 to 16.4): max |Δ| 0.0095 (f16) and 0.116 (bf16); the bounds leave
    /// ~4× margin. Decoding from a prefilled cache matches the batched pass to ~1e-5.
    @Test(arguments: [(DType.f16, Float(0.04)), (DType.bf16, Float(0.45))])
    func halfPrecisionLogitsStayNearF32(_ dtype: DType, _ bound: Float) throws {
        let ids = Array(Self.tokenizer.encode(Self.text).prefix(1024))
        let f32 = try Self.model(.f32), low = try Self.model(dtype)
        let a = try f32.prefill(ids, cache: f32.makeCache(), logitsFor: 0..<ids.count)
        let b = try low.prefill(ids, cache: low.makeCache(), logitsFor: 0..<ids.count)
        let err = zip(a, b).map { abs($0 - $1) }.max()!
        #expect(err < bound && err > 0, "\(dtype): max |Δlogit| \(err)")
        // Decoding (matrix–vector kernels) agrees with the batched pass (tiled kernels).
        let cache = low.makeCache()
        _ = try low.prefill(Array(ids[0..<100]), cache: cache, logitsFor: 0..<0)
        let V = low.config.vocabSize
        var step: [Float] = []
        for i in 100..<132 { step += low.step(ids[i], cache: cache) }
        let tail = Array(b[(100 * V)..<(132 * V)])
        #expect(zip(step, tail).map { abs($0 - $1) }.max()! < 1e-3, "\(dtype): decode vs prefill")
    }

    /// q8 perplexity within 1 % of f32, and KL(f32 ‖ q8) small and positive. Measured on
    /// these 4,155 tokens: f32 ppl 61.355, q8 61.346 (−0.014 %); mean KL 4.4e-5 nats;
    /// the same top token on 99.6 % of them.
    @Test func q8PerplexityNearF32() throws {
        let ids = Self.tokenizer.encode(Self.text)
        let f32 = try Self.model(.f32), q8 = try Self.model(.q8)
        let base = try Scorer(model: f32, tokenizer: Self.tokenizer).score(ids, context: 1024, stride: 1023)
        let quant = try Scorer(model: q8, tokenizer: Self.tokenizer).score(ids, context: 1024, stride: 1023, base: f32)
        let change = abs(quant.ppl - base.ppl) / base.ppl
        let kl = quant.kl.reduce(0, +) / Double(quant.kl.count)
        #expect(change < 0.01, "f32 \(base.ppl), q8 \(quant.ppl)")
        #expect(kl > 1e-6 && kl < 1e-3, "mean KL \(kl)")
        #expect(Double(quant.sameTop) / Double(quant.count) > 0.97)
    }
}
