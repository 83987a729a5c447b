import Foundation
import MSFormat
import MSGenTestSupport
import MSModels
import MSTokenizer
import Testing

@testable import MSGen

func collect(_ g: Generator, _ prompt: String, _ o: GenerationOptions) throws -> (ids: [Int], text: String, summary: GenerationSummary) {
    var ids: [Int] = [], text = "", summary: GenerationSummary?
    try g.generate(try g.promptTokens(prompt), options: o) { e in
        switch e {
        case .token(let d): ids.append(d.id); text += d.text
        case .done(let s): summary = s; text += s.heldBackText
        }
    }
    return (ids, text, summary!)
}

struct GeneratorTests {
    @Test func greedyGenerationFollowsTheModel() throws {
        let g = try fixtureGenerator()
        var o = GenerationOptions(); o.sampler.temperature = 0; o.maxTokens = 40; o.ignoreEOS = true
        let r = try collect(g, "In the beginning", o)
        #expect(r.ids.count == 40 && r.summary.stopReason == .maxTokens)
        // Independently: argmax of the full batched forward over prompt + output, token by token.
        var seq = g.tokenizer.encode("In the beginning")
        let V = g.model.config.vocabSize
        for id in r.ids {
            let n = seq.count
            let logits = try g.model.prefill(
                Array(seq.suffix(g.model.config.context)), cache: g.model.makeCache(),
                logitsFor: (min(n, g.model.config.context) - 1)..<min(n, g.model.config.context))
            #expect(logits.count == V)
            if n <= g.model.config.context { #expect(Sampler.argmax(logits) == id) }
            seq.append(id)
        }
        #expect(r.text == String(decoding: g.tokenizer.decode(r.ids), as: UTF8.self))
    }

    @Test func sameSeedSameBytes() throws {
        let g = try fixtureGenerator()
        var o = GenerationOptions(); o.maxTokens = 60; o.sampler.seed = 1234; o.ignoreEOS = true
        let a = try collect(g, "And God said", o), b = try collect(g, "And God said", o)
        #expect(a.ids == b.ids && a.text == b.text)
        o.sampler.seed = 99
        #expect(try collect(g, "And God said", o).ids != a.ids)
    }

    @Test func stopsAtEOSAndStopStrings() throws {
        let g = try fixtureGenerator()
        var o = GenerationOptions(); o.maxTokens = 200; o.sampler.seed = 7; o.ignoreEOS = true
        let free = try collect(g, "The", o)
        // A stop string taken from the middle of the free output cuts it right there.
        let text = free.text
        guard text.count > 12 else { return }
        let stop = String(text.dropFirst(6).prefix(4))
        o.stop = [stop]
        let cut = try collect(g, "The", o)
        #expect(cut.summary.stopReason == .stop)
        #expect(cut.text == String(text[..<text.range(of: stop)!.lowerBound]))
    }

    @Test func emptyPromptStartsFromEOS() throws {
        let g = try fixtureGenerator()
        #expect(try g.promptTokens("") == [0])
    }

    /// The baseline refuses a prompt longer than its context; CST takes it, prefilled in
    /// chunks through its rolling cache, and greedy generation from it equals feeding the
    /// prompt one token at a time.
    @Test func promptLongerThanContext() throws {
        let long = String(repeating: "And the earth was without form, and void. ", count: 50)
        let baseline = try fixtureGenerator("transformer_untied_gelutanh")
        #expect { _ = try baseline.promptTokens(long) } throws: { "\($0)".contains("longer than the model's context") }
        let g = try fixtureGenerator()
        let ids = try g.promptTokens(long)
        #expect(ids.count > 3 * g.model.config.context)
        var o = GenerationOptions(); o.maxTokens = 12; o.sampler.temperature = 0; o.ignoreEOS = true
        let r = try collect(g, long, o)
        #expect(r.summary.promptTokens == ids.count && r.ids.count == 12)
        let cache = g.model.makeCache()
        var logits: [Float] = []
        for id in ids { logits = g.model.step(id, cache: cache) }
        var greedy: [Int] = []
        for _ in 0..<12 {
            let id = Sampler.argmax(logits)
            greedy.append(id)
            logits = g.model.step(id, cache: cache)
        }
        #expect(r.ids == greedy)
    }

    @Test func streamDeliversTheSameEventsAsTheSyncAPI() async throws {
        let g = try fixtureGenerator()
        var o = GenerationOptions(); o.maxTokens = 30; o.sampler.seed = 5; o.ignoreEOS = true
        let sync = try collect(g, "Let there be light", o)
        var ids: [Int] = [], text = ""
        for try await e in g.stream(try g.promptTokens("Let there be light"), options: o) {
            if case .token(let d) = e { ids.append(d.id); text += d.text }
        }
        #expect(ids == sync.ids && text == sync.text)
    }
}

struct BaselineGenerationTests {
    @Test func baselineStopsWhenItsContextIsFull() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/golden/transformer_untied_gelutanh").path
        let ckpt = try Checkpoint.load(path: dir)
        let model = try Architectures.languageModel(
            config: ckpt.configJSON, tensors: Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) }))
        let g = Generator(model: model, tokenizer: try BPETokenizer(json: ckpt.tokenizerJSON!))
        var o = GenerationOptions(); o.maxTokens = 1000; o.ignoreEOS = true; o.sampler.seed = 3
        let r = try collect(g, "In", o)
        #expect(r.summary.stopReason == .contextFull)
        #expect(r.summary.promptTokens + r.summary.generatedTokens == model.config.context + 1)
    }
}
