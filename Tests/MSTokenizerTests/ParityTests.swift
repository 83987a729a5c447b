import Foundation
import Testing

@testable import MSTokenizer

/// Ids must equal those of Hugging Face tokenizers for every recorded case.
@Suite struct ParityTests {
    let tok = Fixtures.tokenizer

    @Test(arguments: ["cases.json", "special_cases.json", "extra_cases.json"])
    func matchesHuggingFace(file: String) throws {
        let cases = try Fixtures.cases(file)
        #expect(cases.count > 0)
        for c in cases {
            let ids = tok.encode(c.text)
            #expect(ids == c.ids, "\(file): \(visible(c.text))")
            if let decoded = c.decoded {
                #expect(sameScalars(String(decoding: tok.decode(ids), as: UTF8.self), decoded), "\(file): \(visible(c.text))")
            }
        }
    }

    /// Small tokenizers covering what the bundled one does not use: add_prefix_space,
    /// added-token flags, "a b" merges, use_regex false, ignore_merges, missing bytes.
    @Test func variantsMatchHuggingFace() throws {
        let variants = try Fixtures.variants()
        #expect(variants.count >= 4)
        for v in variants {
            let t = try BPETokenizer(json: v.tokenizer_json)
            for c in v.cases {
                let ids = t.encode(c.text)
                #expect(ids == c.ids, "\(v.name): \(visible(c.text))")
                if let decoded = c.decoded {
                    #expect(sameScalars(String(decoding: t.decode(ids), as: UTF8.self), decoded), "\(v.name): \(visible(c.text))")
                }
            }
        }
    }

    /// "é" precomposed and "e" + U+0301 are equal as Swift Strings but not as text to
    /// tokenize: their ids must differ exactly as HF's do (the cases are in extra_cases).
    @Test func canonicallyEquivalentTextsKeepTheirOwnIds() throws {
        let pre = "caf\u{E9}", post = "cafe\u{301}"
        #expect(pre == post)  // Swift says equal…
        #expect(tok.encode(pre) != tok.encode(post))  // …the tokenizer must not
        let recorded = Dictionary(
            try Fixtures.cases("extra_cases.json").map { (Array($0.text.unicodeScalars.map(\.value)), $0.ids) },
            uniquingKeysWith: { a, _ in a })
        for text in ["\u{E9}", "e\u{301}", "caf\u{E9} cafe\u{301}", "\u{C5}ngstr\u{F6}m \u{212B}ngstro\u{308}m"] {
            let ids = try #require(recorded[text.unicodeScalars.map(\.value)], "missing fixture for \(visible(text))")
            #expect(tok.encode(text) == ids, "\(visible(text))")
        }
    }

    /// Swift 6.3 knows Unicode 17; HF's regex engine stops at 16, so newer letters are
    /// "other" to it. The pattern must follow HF, not the Swift runtime.
    @Test func charactersNewerThanTheRegexTablesAreNotLetters() {
        let newLetter = Unicode.Scalar(0x088F)!
        if let age = newLetter.properties.age, age.major >= 17 {
            #expect(newLetter.properties.generalCategory == .otherLetter)
        }
        #expect(scalarClass(0x088F) == .other)
        #expect(scalarClass(0x11DE0) == .other)
        #expect(scalarClass(0x0905) == .letter)
    }

    @Test func vocabularyAndSpecialTokens() throws {
        #expect(tok.vocabSize == 4096)
        #expect(tok.eosTokenId == 0)
        #expect(tok.specialTokenIds == [0])
        #expect(tok.id(of: "<|endoftext|>") == 0)
        #expect(tok.id(of: "\u{120}the").map { tok.tokenBytes($0) } == Array(" the".utf8))
        #expect(tok.token(tok.id(of: "\u{120}the")!) == "\u{120}the")
        #expect(tok.id(of: "no such token") == nil)
        #expect(tok.tokenBytes(-1) == [] && tok.tokenBytes(1 << 40) == [])
        // Every byte has a symbol, so any text encodes, and the specials split out.
        #expect(tok.encode("a<|endoftext|>b") == [tok.id(of: "a")!, 0, tok.id(of: "b")!])
        #expect(tok.decode([0, tok.id(of: "a")!]) == Array("<|endoftext|>a".utf8))
        #expect(tok.decode([0, tok.id(of: "a")!], skipSpecial: true) == Array("a".utf8))
    }

    @Test func mergesCanBeStringsOrPairs() throws {
        let pairs = tokenizerJSON(merges: #"[["a","b"],["ab","c"]]"#)
        let strings = tokenizerJSON(merges: #"["a b","ab c"]"#)
        for json in [pairs, strings] {
            let t = try BPETokenizer(json: json)
            #expect(t.encode("abc") == [260])
            #expect(t.encode("ab ca") == [259, 32, 99, 97])
        }
    }

    @Test func unsupportedTokenizersAreRefusedClearly() throws {
        func message(_ json: String) -> String {
            do { _ = try BPETokenizer(json: json); return "accepted" } catch { return "\(error)" }
        }
        let unigram = #"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}, "pre_tokenizer": null, "decoder": null}"#
        #expect(message(unigram).contains("Unigram model"))
        #expect(message(unigram).contains("only byte-level BPE"))
        let wordPieceish = tokenizerJSON(merges: "[]", pre: #"{"type": "Whitespace"}"#)
        #expect(message(wordPieceish).contains("Whitespace pre-tokenizer"))
        let llama3ish = tokenizerJSON(merges: "[]", pre: #"{"type": "Sequence", "pretokenizers": [{"type": "Split"}, {"type": "ByteLevel"}]}"#)
        #expect(message(llama3ish).contains("Sequence pre-tokenizer"))
        let nfc = tokenizerJSON(merges: "[]", normalizer: #"{"type": "NFC"}"#)
        #expect(message(nfc).contains("NFC normalizer"))
        let metaspace = tokenizerJSON(merges: "[]", decoder: #"{"type": "Metaspace"}"#)
        #expect(message(metaspace).contains("Metaspace decoder"))
        let template = tokenizerJSON(merges: "[]", post: #"{"type": "TemplateProcessing"}"#)
        #expect(message(template).contains("TemplateProcessing post-processor"))
        #expect(message(tokenizerJSON(merges: #"["a q"]"#)).contains("missing from the vocabulary"))
        #expect(message("[1, 2]").contains("no \"model\""))
        #expect(message(#"{"model": {"#).contains("not valid JSON"))
        // An empty normalizer sequence is no normalizer at all.
        #expect(message(tokenizerJSON(merges: "[]", normalizer: #"{"type": "Sequence", "normalizers": []}"#)) == "accepted")
    }
}

/// A minimal byte-level tokenizer.json: the 256 byte symbols (ids 0-255), then "ab" (259)
/// and "abc" (260) when the merges name them, "<|endoftext|>" as 256.
func tokenizerJSON(
    merges: String, pre: String = #"{"type": "ByteLevel", "add_prefix_space": false}"#,
    normalizer: String = "null", decoder: String = #"{"type": "ByteLevel"}"#,
    post: String = "null"
) -> String {
    var vocab: [String] = []
    for b in 0..<256 {
        let s = ByteLevel.string(of: [UInt8(b)])
        vocab.append("\(jsonQuoted(s)): \(b)")
    }
    vocab += [#""<|endoftext|>": 256"#, #""xx": 257"#, #""yy": 258"#, #""ab": 259"#, #""abc": 260"#]
    return """
        {"version": "1.0", "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": true, "normalized": false}],
         "normalizer": \(normalizer), "pre_tokenizer": \(pre), "post_processor": \(post), "decoder": \(decoder),
         "model": {"type": "BPE", "vocab": {\(vocab.joined(separator: ", "))}, "merges": \(merges)}}
        """
}

func jsonQuoted(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
