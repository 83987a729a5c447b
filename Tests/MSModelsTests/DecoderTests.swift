import Foundation
import MSFormat
import Testing

@testable import MSModels

/// A golden fixture of tools/msgen_tools/make_fixtures.py: a checkpoint, token ids and the
/// PyTorch reference's logits (computed in float64 from the same f32 weights).
struct Golden {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/golden")
    let name: String
    let json: JSONValue
    let config: CommonConfig
    let tensors: [String: Tensor]
    let ids: [Int]
    let logits: [Float]  // [T, V] or [labels]
    let probs: [Float]

    init(_ name: String) throws {
        self.name = name
        let dir = Self.root.appendingPathComponent(name).path
        let ckpt = try Checkpoint.load(path: dir)
        json = ckpt.configJSON
        tensors = Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) })
        config =
            try Architectures.named(in: json).name == "ms-trans-encoder"
            ? MSTransConfig(ConfigReader(json)).common
            : Architectures.languageModel(config: json, tensors: tensors).config
        let g = Dictionary(uniqueKeysWithValues: try Safetensors.read(path: dir + "/golden.safetensors").map { ($0.name, $0.tensor) })
        ids = g["input_ids"]!.ints()
        logits = g["logits"]!.floats()
        probs = g["probs"]?.floats() ?? []
    }

    /// The config of an ms-trans-encoder fixture.
    var msTrans: MSTransConfig { get throws { try MSTransConfig(ConfigReader(json)) } }

    static func names(prefix: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).filter { $0.hasPrefix(prefix) }.sorted()
    }
}

/// Largest |a − b| relative to max(1, |b|).
func maxError(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    zip(a, b).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
}

/// A decoder of the fixture's architecture.
func decoder(_ g: Golden) throws -> LanguageModel {
    try Architectures.languageModel(config: g.json, tensors: g.tensors)
}

/// Every decoder (CST, the baseline, top-down, bottom-up and retina) against the PyTorch reference.
struct DecoderTests {
    static let fixtures =
        Golden.names(prefix: "cst_") + Golden.names(prefix: "transformer_") + MultiScaleTests.fixtures
        + RetinaTests.fixtures

    @Test func fixturesExist() { #expect(Self.fixtures.count >= 10) }

    /// The batched forward equals the PyTorch reference at every position in the context.
    @Test(arguments: fixtures)
    func batchedForwardMatchesReference(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let T = min(g.ids.count, g.config.context), V = g.config.vocabSize
        let logits = try model.prefill(Array(g.ids[0..<T]), cache: model.makeCache(), logitsFor: 0..<T)
        #expect(maxError(logits[...], g.logits[0..<(T * V)]) < 1e-4)
    }

    /// Prefill k tokens then decode the rest one by one: every position equals the
    /// reference, for every k from 0 to the context (and, past it, the §1 rolling rule).
    @Test(arguments: fixtures)
    func prefillThenDecodeMatchesReference(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let T = model.canDecodePastContext ? g.ids.count : min(g.ids.count, g.config.context), V = g.config.vocabSize
        for k in 0...min(T, g.config.context) {
            let cache = model.makeCache()
            var logits = try model.prefill(Array(g.ids[0..<k]), cache: cache, logitsFor: 0..<k)
            for i in k..<T { logits += model.step(g.ids[i], cache: cache) }
            let err = maxError(logits[...], g.logits[0..<(T * V)])
            #expect(err < 1e-4, "k = \(k): max error \(err)")
        }
    }

    /// A prefix's logits are the prefix of the whole sequence's logits (causality).
    @Test(arguments: fixtures)
    func prefixInvariance(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let T = min(g.ids.count, g.config.context), V = g.config.vocabSize
        let full = try model.prefill(Array(g.ids[0..<T]), cache: model.makeCache(), logitsFor: 0..<T)
        for n in 1..<T {
            let part = try model.prefill(Array(g.ids[0..<n]), cache: model.makeCache(), logitsFor: 0..<n)
            #expect(maxError(part[...], full[0..<(n * V)]) < 1e-5, "prefix \(n)")
        }
    }

    /// The baseline's cache holds every token; the CST's does not grow.
    @Test func baselineCacheGrowsCSTCacheDoesNot() throws {
        let b = try decoder(try Golden("transformer_untied_gelutanh"))
        let c = b.makeCache()
        _ = try b.prefill([1, 2, 3, 4], cache: c, logitsFor: 3..<4)
        let four = c.byteCount
        _ = b.step(5, cache: c)
        #expect(c.byteCount == four * 5 / 4)
    }

    /// The cache does not grow with the number of tokens.
    @Test func cacheIsBounded() throws {
        let g = try Golden("cst_a2_shared_untied_past_context")
        let model = try decoder(g)
        let cache = model.makeCache()
        let N = g.config.context
        for i in 0..<N { _ = model.step(g.ids[i % g.ids.count], cache: cache) }
        let atN = cache.byteCount
        for i in 0..<(9 * N) { _ = model.step(g.ids[i % g.ids.count], cache: cache) }
        #expect(cache.position == 10 * N)
        #expect(cache.byteCount == atN)
    }

    /// The baseline cannot go past its positions: a longer prompt is one clear error, and
    /// so is a prefill that would run past them from a live cache.
    @Test func baselinePromptLongerThanContextIsAnError() throws {
        let g = try Golden("transformer_untied_gelutanh")
        let model = try decoder(g)
        let ids = [Int](repeating: 1, count: g.config.context + 1)
        #expect { _ = try model.prefill(ids, cache: model.makeCache(), logitsFor: 0..<1) } throws: {
            "\($0)" == "the prompt has \(ids.count) tokens; this model's context is \(g.config.context)"
        }
        let cache = model.makeCache()
        _ = try model.prefill(Array(ids[0..<3]), cache: cache, logitsFor: 0..<0)
        #expect(throws: MSGenError.self) { _ = try model.prefill(Array(ids[3...]), cache: cache, logitsFor: 0..<0) }
        #expect(cache.position == 3)
    }
}

/// A Hugging Face GPT-2 checkpoint (save_pretrained, random weights) converts to the
/// baseline, and msgen's logits equal GPT2LMHeadModel's.
struct GPT2Tests {
    @Test func logitsEqualTransformers() throws {
        let dir = Golden.root.deletingLastPathComponent().appendingPathComponent("gpt2").path
        let ckpt = try Checkpoint.load(path: dir)
        let config = try TransformerConfig(ConfigReader(ckpt.configJSON))
        #expect(config.common.architecture == "transformer-decoder" && config.common.activation == .geluTanh && config.common.tieEmbeddings)
        let model = try TransformerDecoder(config: config, tensors: Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) }))
        let g = Dictionary(uniqueKeysWithValues: try Safetensors.read(path: dir + "/golden.safetensors").map { ($0.name, $0.tensor) })
        let ids = g["input_ids"]!.ints()
        let logits = try model.prefill(ids, cache: model.makeCache(), logitsFor: 0..<ids.count)
        let err = maxError(logits[...], g["logits"]!.floats()[...])
        #expect(err < 1e-4, "max error \(err)")
    }
}
