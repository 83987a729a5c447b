import MSTokenizer
import Testing

/// Random text of arbitrary scalars, biased towards what tokenizers get wrong: whitespace
/// runs of every kind, combining marks, emoji with joiners, CJK, controls, U+FFFD.
func randomText(_ rng: inout SeededRNG, maxScalars: Int = 48) -> String {
    let whitespace: [UInt32] = [
        0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x200A, 0x2028,
        0x2029, 0x202F, 0x205F, 0x3000, 0x180E, 0x200B, 0xFEFF,
    ]
    var s = String.UnicodeScalarView()
    for _ in 0..<Int.random(in: 0...maxScalars, using: &rng) {
        let v: UInt32
        switch Int.random(in: 0..<12, using: &rng) {
        case 0...3: v = UInt32.random(in: 0x20..<0x7F, using: &rng)
        case 4: v = whitespace.randomElement(using: &rng)!
        case 5: v = UInt32.random(in: 0x300..<0x370, using: &rng)
        case 6: v = UInt32.random(in: 0x4E00..<0xA000, using: &rng)
        case 7: v = [0x1F600, 0x1F44D, 0x1F3FD, 0x200D, 0xFE0F, 0x1F1FA].randomElement(using: &rng)!
        case 8: v = UInt32.random(in: 0..<0x20, using: &rng)
        case 9: v = 0xFFFD
        case 10: v = UInt32.random(in: 0x80..<0x800, using: &rng)
        default: v = UInt32.random(in: 0..<0x110000, using: &rng)
        }
        guard let u = Unicode.Scalar(v) else { continue }
        // Runs, so that whitespace and repeated characters come in groups.
        for _ in 0..<(Int.random(in: 0..<5, using: &rng) == 0 ? Int.random(in: 2...6, using: &rng) : 1) { s.append(u) }
    }
    return String(s)
}

@Suite struct RoundTripTests {
    let tok = Fixtures.tokenizer

    /// Byte-level BPE is lossless: decoding the ids gives back the exact UTF-8.
    @Test func decodeInvertsEncode() {
        var rng = SeededRNG(seed: 42)
        for _ in 0..<3000 {
            let text = randomText(&rng)
            let ids = tok.encode(text)
            #expect(tok.decode(ids) == Array(text.utf8), "\(visible(text))")
            #expect(ids.allSatisfy { $0 > 0 && $0 < tok.vocabSize })
        }
    }

    @Test func longInputs() {
        // Long pieces exercise the merge heap; a long run must not be quadratic.
        for text in [
            String(repeating: " ", count: 100_000), String(repeating: "a", count: 100_000),
            String(repeating: "\u{301}", count: 20_000), String(repeating: "ab 12 ", count: 20_000),
        ] {
            #expect(tok.decode(tok.encode(text)) == Array(text.utf8))
        }
    }
}

@Suite struct StreamingTests {
    let tok = Fixtures.tokenizer

    /// For any ids, the pieces join to the whole decode, and no piece splits a character:
    /// each is a prefix-consistent part of the final text.
    @Test(arguments: [true, false])
    func streamEqualsWholeDecode(skipSpecial: Bool) {
        var rng = SeededRNG(seed: skipSpecial ? 7 : 8)
        // Token ids whose bytes are single UTF-8 pieces (lead or continuation bytes)
        // make broken and interleaved characters likely.
        let fragments = (0..<tok.vocabSize).filter { tok.tokenBytes($0).contains { $0 >= 0x80 } }
        for round in 0..<3000 {
            var ids: [Int] = []
            for _ in 0..<Int.random(in: 0...24, using: &rng) {
                switch Int.random(in: 0..<8, using: &rng) {
                case 0: ids.append(0)
                case 1...4: ids.append(fragments.randomElement(using: &rng)!)
                default: ids.append(Int.random(in: 0..<tok.vocabSize, using: &rng))
                }
            }
            if round % 3 == 0 { ids = tok.encode(randomText(&rng)) }
            let whole = String(decoding: tok.decode(ids, skipSpecial: skipSpecial), as: UTF8.self)
            var detok = StreamingDetokenizer(tok, skipSpecial: skipSpecial)
            var streamed = ""
            for id in ids {
                let piece = detok.push(id)
                streamed += piece
                // Never more than the final text has: the stream is a scalar prefix of it.
                #expect(whole.unicodeScalars.starts(with: streamed.unicodeScalars), "ids \(ids)")
            }
            streamed += detok.finish()
            #expect(sameScalars(streamed, whole), "ids \(ids)")
        }
    }

    @Test func holdsBackAnUnfinishedCharacterOnly() throws {
        // "😀" is F0 9F 98 80; feed it one byte-token at a time.
        let bytes = Array("a😀b".utf8)
        let ids = try bytes.map { try #require(tok.id(of: String(ByteLevelAlphabet.character(of: $0)))) }
        var detok = StreamingDetokenizer(tok)
        #expect(detok.push(ids[0]) == "a")
        #expect(detok.push(ids[1]) == "")
        #expect(detok.push(ids[2]) == "")
        #expect(detok.push(ids[3]) == "")
        #expect(detok.push(ids[4]) == "😀")
        #expect(detok.push(ids[5]) == "b")
        // An unfinished character at the end becomes one U+FFFD, as in the whole decode.
        #expect(detok.push(ids[1]) == "" && detok.push(ids[2]) == "")
        #expect(detok.finish() == "\u{FFFD}")
        #expect(detok.finish() == "")
        // A byte that cannot continue the pending character releases it at once.
        #expect(detok.push(ids[1]) == "")
        #expect(sameScalars(detok.push(ids[0]), "\u{FFFD}a"))
        // Special tokens print nothing, even in the middle of a character.
        #expect(detok.push(ids[1]) == "" && detok.push(0) == "" && detok.push(ids[2]) == "")
        #expect(detok.push(ids[3]) == "" && detok.push(ids[4]) == "😀")
        var raw = StreamingDetokenizer(tok, skipSpecial: false)
        #expect(raw.push(0) == "<|endoftext|>")
    }
}

/// The GPT-2 byte-to-character table, restated independently of the module: printable
/// Latin-1 stays, the other 68 bytes move to U+0100 onwards in order.
enum ByteLevelAlphabet {
    static func character(of byte: UInt8) -> Character {
        let b = Int(byte)
        if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
            return Character(Unicode.Scalar(byte))
        }
        let moved = (0..<b).filter { !((0x21...0x7E).contains($0) || (0xA1...0xAC).contains($0) || (0xAE...0xFF).contains($0)) }.count
        return Character(Unicode.Scalar(0x100 + UInt32(moved))!)
    }
}
