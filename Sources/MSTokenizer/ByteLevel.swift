/// GPT-2's byte-level alphabet and pre-tokenizer, as Hugging Face `tokenizers` implements
/// them (pre_tokenizers/byte_level.rs).
enum ByteLevel {
    /// The printable character that stands for each byte in vocabulary strings: printable
    /// Latin-1 bytes stand for themselves, the other 68 bytes (controls, space, 0x7F-0xA0,
    /// 0xAD) are moved, in order, to U+0100 onwards so that no token contains whitespace.
    static let scalarOfByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 0x100
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { table[b] = Unicode.Scalar(UInt8(b)) } else { table[b] = Unicode.Scalar(next)!; next += 1 }
        }
        return table
    }()

    /// The inverse of `scalarOfByte`, indexed by scalar value (all are below U+0144).
    static let byteOfScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, s) in scalarOfByte.enumerated() { table[Int(s.value)] = Int16(b) }
        return table
    }()

    /// The bytes a vocabulary string stands for, as the ByteLevel decoder finds them:
    /// each character through the alphabet or, if any character is outside it (an added
    /// token containing a space, say), the string's own UTF-8. So an added token "é!" is
    /// the lone byte E9 then "!", which decodes to U+FFFD "!" in the reference too.
    static func bytes(of token: String) -> [UInt8] {
        guard isByteLevel(token) else { return Array(token.utf8) }
        return token.unicodeScalars.map { UInt8(byteOfScalar[Int($0.value)]) }
    }

    /// Whether every character of `token` belongs to the byte alphabet.
    static func isByteLevel(_ token: String) -> Bool {
        token.unicodeScalars.allSatisfy { $0.value < 0x144 && byteOfScalar[Int($0.value)] >= 0 }
    }

    /// The vocabulary string of a byte sequence.
    static func string(of bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(scalarOfByte[Int(b)]) }
        return String(s)
    }
}

// MARK: - The GPT-2 pattern

/// The classes the GPT-2 pattern tells apart:
/// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
enum ScalarClass: UInt8 {
    case letter, number, space, other
}

/// Whether the reference's regex engines know the character. tokenizers 0.23 matches the
/// GPT-2 pattern with Oniguruma and added tokens' \w and \s with Rust's regex crate, both
/// with Unicode 16.0 tables; characters assigned later (Swift 6.3 knows 17.0) are
/// unassigned there: neither letters, numbers nor word characters. Checked against
/// tokenizers for every scalar.
func isKnownToReference(_ p: Unicode.Scalar.Properties) -> Bool {
    guard let age = p.age else { return false }
    return (age.major, age.minor) <= (16, 0)
}

private let asciiClasses: [ScalarClass] = (0..<128).map { v in
    switch UInt8(v) {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): .letter
    case UInt8(ascii: "0")...UInt8(ascii: "9"): .number
    case 0x09...0x0D, 0x20: .space
    default: .other
    }
}

/// \s in Oniguruma's Unicode mode is 9-D, U+0085 and the Zs/Zl/Zp categories, which is
/// exactly the Unicode White_Space property.
@inline(__always)
func scalarClass(_ v: UInt32) -> ScalarClass {
    if v < 128 { return asciiClasses[Int(v)] }
    let p = Unicode.Scalar(v)!.properties
    if p.isWhitespace { return .space }
    let cls: ScalarClass
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: cls = .letter
    case .decimalNumber, .letterNumber, .otherNumber: cls = .number
    default: return .other
    }
    return isKnownToReference(p) ? cls : .other
}

/// The scalar starting at `i` of valid UTF-8, and its length in bytes.
@inline(__always)
func decodeScalar(_ u: UnsafeBufferPointer<UInt8>, _ i: Int) -> (value: UInt32, length: Int) {
    let b0 = UInt32(u[i])
    if b0 < 0x80 { return (b0, 1) }
    if b0 < 0xE0 { return ((b0 & 0x1F) << 6 | UInt32(u[i + 1] & 0x3F), 2) }
    if b0 < 0xF0 {
        return ((b0 & 0x0F) << 12 | UInt32(u[i + 1] & 0x3F) << 6 | UInt32(u[i + 2] & 0x3F), 3)
    }
    return (
        (b0 & 0x07) << 18 | UInt32(u[i + 1] & 0x3F) << 12 | UInt32(u[i + 2] & 0x3F) << 6
            | UInt32(u[i + 3] & 0x3F), 4
    )
}

/// Calls `body` with the byte range of each piece the GPT-2 pattern cuts `range` of the
/// valid UTF-8 `u` into. A hand-written scanner over Unicode scalars (the pattern works
/// on code points, not grapheme clusters), trying the alternatives in order:
///   1. an ASCII apostrophe contraction ('s 't 're 've 'm 'll 'd, lowercase only);
///   2-4. an optional U+0020 then a run of letters, or of numbers, or of anything else
///        that is not whitespace;
///   5. whitespace up to the end, or all but the last character of a longer run before
///      non-whitespace (that last one then leads the next piece: " word");
///   6. a single whitespace character before non-whitespace.
func forEachPreToken(_ u: UnsafeBufferPointer<UInt8>, in range: Range<Int>, _ body: (Range<Int>) -> Void) {
    let end = range.upperBound
    var i = range.lowerBound
    while i < end {
        let (c, n) = decodeScalar(u, i)
        if c == UInt32(UInt8(ascii: "'")), let k = contractionLength(u, i + 1, end) {
            body(i..<(i + 1 + k))
            i += 1 + k
            continue
        }
        var cls = scalarClass(c)
        var runStart = i
        if c == 0x20, i + n < end {
            let next = scalarClass(decodeScalar(u, i + n).value)
            if next != .space { cls = next; runStart = i + n }
        }
        if cls != .space {
            var k = runStart
            while k < end {
                let (ck, nk) = decodeScalar(u, k)
                if scalarClass(ck) != cls { break }
                k += nk
            }
            body(i..<k)
            i = k
            continue
        }
        var k = i, last = i, count = 0
        while k < end {
            let (ck, nk) = decodeScalar(u, k)
            if scalarClass(ck) != .space { break }
            last = k
            k += nk
            count += 1
        }
        let stop = (k == end || count == 1) ? k : last
        body(i..<stop)
        i = stop
    }
}

/// The length after the apostrophe of a contraction starting at `i`, if there is one.
@inline(__always)
private func contractionLength(_ u: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int? {
    guard i < end else { return nil }
    switch u[i] {
    case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"): return 1
    case UInt8(ascii: "r"), UInt8(ascii: "v"): return i + 1 < end && u[i + 1] == UInt8(ascii: "e") ? 2 : nil
    case UInt8(ascii: "l"): return i + 1 < end && u[i + 1] == UInt8(ascii: "l") ? 2 : nil
    default: return nil
    }
}
