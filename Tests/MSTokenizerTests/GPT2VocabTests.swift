import Foundation
import MSFormat
import MSTokenizer
import Testing

/// GPT-2 checkpoints that ship vocab.json + merges.txt instead of tokenizer.json: the
/// tokenizer.json msgen builds from them encodes exactly as HF tokenizers does when it
/// loads the same two files (tools/make_convert_fixtures.py recorded the ids).
struct GPT2VocabTests {
    static let dir = Fixtures.testsDir.appendingPathComponent("Fixtures/format/gpt2-vocab")

    func file(_ name: String) throws -> Data { try Data(contentsOf: Self.dir.appendingPathComponent(name)) }

    func tokenizer() throws -> BPETokenizer {
        try BPETokenizer(json: GPT2.tokenizerJSON(vocab: file("vocab.json"), merges: file("merges.txt"), what: "gpt2-vocab"))
    }

    @Test func encodesLikeHuggingFace() throws {
        let tok = try tokenizer()
        let cases = try JSONDecoder().decode([Fixtures.Case].self, from: file("cases.json"))
        #expect(cases.count >= 10)
        for c in cases {
            #expect(tok.encode(c.text) == c.ids, "\(c.text.debugDescription)")
            #expect(String(decoding: tok.decode(c.ids), as: UTF8.self) == c.text)
        }
        #expect(tok.eosTokenId == 0 && tok.specialTokenIds == [0])
    }

    @Test func isTheTokenizerJSONHuggingFaceMakes() throws {
        // HF tokenizers' own to_str() for BPE.from_file(vocab.json, merges.txt), set up as
        // transformers' GPT2Converter does: the same JSON value, key for key.
        let ours = try JSONSerialization.jsonObject(
            with: Data(GPT2.tokenizerJSON(vocab: file("vocab.json"), merges: file("merges.txt"), what: "v").utf8))
        let theirs = try JSONSerialization.jsonObject(with: file("hf_tokenizer.json"))
        #expect((ours as! NSDictionary).isEqual(theirs as! NSDictionary))
    }

    @Test func matchesTheTokenizerJSONItCameFrom() throws {
        // vocab.json + merges.txt were cut out of the gpt2 fixture's tokenizer.json.
        let original = try BPETokenizer(
            json: String(contentsOf: Fixtures.testsDir.appendingPathComponent("Fixtures/gpt2/tokenizer.json"), encoding: .utf8))
        let rebuilt = try tokenizer()
        #expect(rebuilt.vocabSize == original.vocabSize)
        for text in ["In the beginning God created the heaven and the earth.", "x <|endoftext|> y", "  \n\t 123 ünïcode"] {
            #expect(rebuilt.encode(text) == original.encode(text))
        }
    }

    @Test func malformedFilesAreClearErrors() throws {
        let vocab = try file("vocab.json")
        func error(_ v: Data, _ m: String) -> String {
            do { _ = try GPT2.tokenizerJSON(vocab: v, merges: Data(m.utf8), what: "ckpt"); return "no error" } catch { return "\(error)" }
        }
        #expect(error(Data("[1, 2]".utf8), "").contains("vocab.json is not a JSON object"))
        #expect(error(vocab, "#version: 0.2\nt h\nonlyone\n").contains("merges.txt line 3 is not two tokens"))
        #expect(error(vocab, "t h\n\nn d\n").contains("merges.txt line 2"))
        // A merge of tokens the vocabulary lacks is refused when the tokenizer is built.
        let json = try GPT2.tokenizerJSON(vocab: vocab, merges: Data("zzz qqq\n".utf8), what: "ckpt")
        #expect { _ = try BPETokenizer(json: json) } throws: { "\($0)".contains("missing from the vocabulary") }
    }
}
