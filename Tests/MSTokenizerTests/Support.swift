import Foundation
import MSGen
import MSTokenizer

/// Fixtures under Tests/Fixtures/tokenizer, made by tools/msgen_tools/make_fixtures.py
/// (tokenizer.json, cases.json, special_cases.json) and tools/make_tokenizer_cases.py
/// (extra_cases.json, variants.json), all from Hugging Face tokenizers.
enum Fixtures {
    static let testsDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    static let tokenizerDir = testsDir.appendingPathComponent("Fixtures/tokenizer")
    static let repoRoot = testsDir.deletingLastPathComponent()

    static func text(_ name: String) throws -> String {
        try String(contentsOf: tokenizerDir.appendingPathComponent(name), encoding: .utf8)
    }

    static let tokenizer: BPETokenizer = {
        do { return try BPETokenizer(json: text("tokenizer.json")) } catch { fatalError("\(error)") }
    }()

    struct Case: Decodable {
        let text: String
        let ids: [Int]
        /// HF's decode(ids, skip_special_tokens=False), where recorded.
        let decoded: String?
    }

    struct Variant: Decodable {
        let name: String
        let tokenizer_json: String
        let cases: [Case]
    }

    static func cases(_ name: String) throws -> [Case] {
        try JSONDecoder().decode([Case].self, from: Data(text(name).utf8))
    }

    static func variants() throws -> [Variant] {
        try JSONDecoder().decode([Variant].self, from: Data(text("variants.json").utf8))
    }
}

/// A seeded generator, so a failing random case can be reproduced.
typealias SeededRNG = SplitMix64

/// Scalars compared one by one: `==` on String is canonical equivalence, too lenient here.
func sameScalars(_ a: String, _ b: String) -> Bool { a.unicodeScalars.elementsEqual(b.unicodeScalars) }

/// A short description of a string with every scalar visible.
func visible(_ s: String) -> String {
    s.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? String($0) : "\\u{\(String($0.value, radix: 16))}" }.joined()
}
