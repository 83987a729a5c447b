/// A token from tokenizer.json's "added_tokens": matched literally in the text before
/// pre-tokenization and never split.
struct AddedToken: Sendable {
    let content: [UInt8]
    let id: Int
    let special: Bool
    /// Only match where no word character touches either end.
    let singleWord: Bool
    /// Swallow the whitespace before / after the match into the token.
    let lstrip: Bool
    let rstrip: Bool
    /// Matched on normalized text, after the non-normalized tokens (this tokenizer has no
    /// normalizer, so only the order of the two passes differs).
    let normalized: Bool
    let string: String
}

/// A set of added tokens and the reference's way of cutting them out of text
/// (tokenizers' AddedVocabulary::find_matches).
struct AddedTokenSet: Sendable {
    private let tokens: [AddedToken]
    /// Token indices by first byte, longest first, for leftmost-longest matching.
    private let byFirstByte: [[Int]]

    init(_ tokens: [AddedToken]) {
        self.tokens = tokens
        var buckets = [[Int]](repeating: [], count: 256)
        for (i, t) in tokens.enumerated() { buckets[Int(t.content[0])].append(i) }
        byFirstByte = buckets.map { $0.sorted { tokens[$0].content.count > tokens[$1].content.count } }
    }

    /// `range` of `u` as consecutive pieces: added tokens with their id, and the text
    /// between them with nil. Matches are leftmost-longest and non-overlapping; a match
    /// refused by single_word is still consumed, as by the reference's Aho-Corasick
    /// iterator, and lstrip/rstrip widen a match over neighbouring whitespace.
    func split(_ u: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> [(id: Int?, range: Range<Int>)] {
        if tokens.isEmpty { return [(nil, range)] }
        var pieces: [(id: Int?, range: Range<Int>)] = []
        var textStart = range.lowerBound
        var p = range.lowerBound
        while p < range.upperBound {
            guard let t = longestMatch(u, at: p, end: range.upperBound) else { p += 1; continue }
            var start = p, stop = p + t.content.count
            p = stop
            if t.singleWord {
                let wordBefore = start > range.lowerBound && isWordCharacter(scalarBefore(u, start))
                let wordAfter = stop < range.upperBound && isWordCharacter(decodeScalar(u, stop).value)
                if wordBefore || wordAfter { continue }
            }
            if t.lstrip {
                var s = start
                while s > range.lowerBound, isWhitespace(scalarBefore(u, s)) { s = previousBoundary(u, s) }
                // Whitespace an earlier match already took stays with it.
                start = max(s, textStart)
            }
            if t.rstrip {
                while stop < range.upperBound {
                    let (c, n) = decodeScalar(u, stop)
                    guard isWhitespace(c) else { break }
                    stop += n
                }
            }
            if textStart < start { pieces.append((nil, textStart..<start)) }
            pieces.append((t.id, start..<stop))
            textStart = stop
        }
        if textStart < range.upperBound { pieces.append((nil, textStart..<range.upperBound)) }
        return pieces
    }

    private func longestMatch(_ u: UnsafeBufferPointer<UInt8>, at p: Int, end: Int) -> AddedToken? {
        for i in byFirstByte[Int(u[p])] {
            let c = tokens[i].content
            if p + c.count <= end && c.elementsEqual(u[p..<(p + c.count)]) { return tokens[i] }
        }
        return nil
    }
}

/// Rust regex's Unicode \w, which the reference uses for single_word.
private func isWordCharacter(_ v: UInt32) -> Bool {
    let p = Unicode.Scalar(v)!.properties
    guard isKnownToReference(p) else { return false }
    switch p.generalCategory {
    case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
    default: return p.isAlphabetic || p.isJoinControl
    }
}

/// Rust regex's Unicode \s: the White_Space property.
private func isWhitespace(_ v: UInt32) -> Bool { Unicode.Scalar(v)!.properties.isWhitespace }

private func previousBoundary(_ u: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
    var j = i - 1
    while j > 0 && u[j] & 0xC0 == 0x80 { j -= 1 }
    return j
}

private func scalarBefore(_ u: UnsafeBufferPointer<UInt8>, _ i: Int) -> UInt32 {
    decodeScalar(u, previousBoundary(u, i)).value
}
