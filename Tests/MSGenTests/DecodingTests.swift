import Foundation
import MSFormat
import MSTokenizer
import Testing

@testable import MSGen

/// `Decoding` driven by hand, without a model: greedy sampling over logits that put the
/// wanted token on top, so each test chooses the exact token sequence.
struct DecodingTests {
    static let tokenizer: BPETokenizer = {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/golden/cst_a3_shared_untied_gelutanh_full").path
        return try! BPETokenizer(json: Checkpoint.load(path: dir).tokenizerJSON!)
    }()
    static var V: Int { tokenizer.vocabSize }

    /// Logits whose highest value is `id` (a gentle slope elsewhere, so logprobs differ).
    static func logits(favouring id: Int) -> [Float] {
        var l = (0..<V).map { Float($0 % 7) * 0.1 }
        l[id] = 5
        return l
    }

    static func decoding(
        maxTokens: Int = 100, stop: [String] = [], logprobs: Int? = nil, eos: Int? = 0,
        context: Int = 1000, pastContext: Bool = true, prompt: [Int] = [1, 2]
    ) -> Decoding {
        var o = GenerationOptions()
        o.maxTokens = maxTokens; o.stop = stop; o.logprobs = logprobs
        o.sampler.temperature = 0
        return Decoding(prompt: prompt, options: o, tokenizer: tokenizer, eos: eos, context: context, canDecodePastContext: pastContext)
    }

    /// Feeds `ids` one by one until the decoding stops; returns every result.
    static func run(_ d: inout Decoding, _ ids: [Int]) -> [Decoded] {
        var out: [Decoded] = []
        for id in ids where d.finished == nil {
            out.append(logits(favouring: id).withUnsafeBufferPointer { d.next($0) })
        }
        return out
    }

    /// Token ids of a text, to drive a decoding through it.
    static func ids(_ s: String) -> [Int] { tokenizer.encode(s) }

    @Test func maxTokensZeroIsFinishedBeforeAnyToken() {
        let d = Self.decoding(maxTokens: 0)
        #expect(d.finished == .maxTokens)
    }

    @Test func stopsAtMaxTokensWithEveryPiecePrinted() {
        var d = Self.decoding(maxTokens: 3)
        let ids = Self.ids(" the earth was without form")
        let out = Self.run(&d, ids)
        #expect(out.map(\.id) == Array(ids.prefix(3)))
        #expect(out.map(\.stop) == [nil, nil, .maxTokens] && d.finished == .maxTokens)
        #expect(out.map(\.text).joined() == String(decoding: Self.tokenizer.decode(Array(ids.prefix(3))), as: UTF8.self))
    }

    @Test func eosEndsTheSequenceAndReleasesWhatWasHeld() {
        var d = Self.decoding(stop: ["XYZ"])
        // "earth X" then end-of-text: the "X" was held back as a possible "XYZ" and is printed at the end.
        let out = Self.run(&d, Self.ids("earth X") + [0, 5, 6])
        #expect(out.last?.stop == .eos && out.count == Self.ids("earth X").count + 1)
        #expect(out.map(\.text).joined() == "earth X")
    }

    @Test func stopStringCutsTheTextButNotThePieces() {
        var d = Self.decoding(stop: [" was"])
        let ids = Self.ids(" the earth was without form")
        let out = Self.run(&d, ids)
        #expect(out.last?.stop == .stop && d.finished == .stop)
        #expect(out.map(\.text).joined() == " the earth")
        // Each piece is its token's own text, the stop string included.
        for (o, id) in zip(out, ids) { #expect(o.piece == String(decoding: Self.tokenizer.tokenBytes(id), as: UTF8.self)) }
    }

    @Test func contextFullWhenTheModelCannotTakeTheToken() {
        // Prompt of 2 in a context of 5: tokens 1-3 fit, the 4th would be the 6th in the cache.
        var d = Self.decoding(context: 5, pastContext: false)
        let out = Self.run(&d, Self.ids(" the earth was without form and void"))
        #expect(out.count == 4 && out.last?.stop == .contextFull)
        var past = Self.decoding(context: 5, pastContext: true)
        #expect(Self.run(&past, Self.ids(" the earth was without form and void")).count > 4)
    }

    @Test func cancelReturnsWhatIsHeldBack() {
        var d = Self.decoding(stop: ["earth!"])
        let out = Self.run(&d, Self.ids("the earth"))
        #expect(out.map(\.text).joined() == "the ")
        #expect(d.cancel() == "earth" && d.finished == .cancelled)
        #expect(d.cancel() == "")
    }

    @Test func unfinishedCharacterWaitsForItsLastByte() {
        // Byte-level tokens can split a character (the fixture's small vocabulary splits these).
        let text = "naïve café 😀"
        let ids = Self.ids(text)
        var d = Self.decoding()
        let out = Self.run(&d, ids + [0])
        #expect(out.map(\.text).joined() == text && out.map(\.piece).joined() == text)
        for o in out { #expect(!o.text.contains("\u{FFFD}")) }
    }

    @Test func logprobsAreTheLogSoftmaxOfTheLogits() {
        var d = Self.decoding(logprobs: 3)
        let l = Self.logits(favouring: 42)
        let r = l.withUnsafeBufferPointer { d.next($0) }
        // Independently, in Double: log softmax and the three best (ties to the lower id).
        let m = Double(l.max()!)
        let lse = m + log(l.reduce(0.0) { $0 + exp(Double($1) - m) })
        let order = l.indices.sorted { (l[$0], -$0) > (l[$1], -$1) }
        #expect(r.id == 42 && abs(Double(r.logprob!) - (Double(l[42]) - lse)) < 1e-5)
        #expect(r.top.map(\.id) == Array(order.prefix(3)))
        for t in r.top { #expect(abs(Double(t.logprob) - (Double(l[t.id]) - lse)) < 1e-5) }
        // Its own logprob without alternatives (OpenAI's logprobs 0), and nothing unasked.
        var own = Self.decoding(logprobs: 0)
        let o = l.withUnsafeBufferPointer { own.next($0) }
        #expect(o.top.isEmpty && abs(Double(o.logprob!) - (Double(l[42]) - lse)) < 1e-5)
        var none = Self.decoding()
        let n = l.withUnsafeBufferPointer { none.next($0) }
        #expect(n.top.isEmpty && n.logprob == nil)
    }

    @Test func promptCheckIsTheContext() throws {
        try Decoding.checkPrompt(count: 5, context: 5, canDecodePastContext: false)
        #expect { try Decoding.checkPrompt(count: 6, context: 5, canDecodePastContext: false) } throws: {
            "\($0)".contains("longer than the model's context of 5")
        }
        try Decoding.checkPrompt(count: 6, context: 5, canDecodePastContext: true)
        #expect(throws: (any Error).self) { try Decoding.checkPrompt(count: 0, context: 5, canDecodePastContext: true) }
    }
}
