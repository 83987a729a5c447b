/// Turns generated ids into text as they arrive. A token can end in the middle of a UTF-8
/// character (an emoji is often 2-4 byte tokens), so the bytes of an unfinished trailing
/// character are held back until the next token completes it or `finish()` gives up.
///
/// All pushes plus `finish()` concatenate to `String(decoding: decode(ids, skipSpecial:),
/// as: UTF8.self)`, invalid bytes included: every byte that cannot begin or continue a
/// character is released at once, and the decoder replaces it exactly as it would have
/// in the whole text.
public struct StreamingDetokenizer: Sendable {
    public let tokenizer: BPETokenizer
    public let skipSpecial: Bool
    private var pending: [UInt8] = []

    /// With `skipSpecial` (the default), special tokens print nothing.
    public init(_ tokenizer: BPETokenizer, skipSpecial: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// The text that `id` completes; empty while a character is still unfinished.
    public mutating func push(_ id: Int) -> String {
        if skipSpecial && tokenizer.isSpecialToken(id) { return "" }
        pending += tokenizer.tokenBytes(id)
        let ready = completePrefixLength(pending)
        defer { pending.removeFirst(ready) }
        return String(decoding: pending[..<ready], as: UTF8.self)
    }

    /// Whatever is held back, an unfinished character becoming U+FFFD.
    public mutating func finish() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }
}

/// The length of the longest prefix of `b` whose decoding no later byte can change: all of
/// `b` unless it ends with a proper prefix of a well-formed UTF-8 sequence, which is the
/// only thing a following byte could still turn into a character.
func completePrefixLength(_ b: [UInt8]) -> Int {
    let n = b.count
    // The last lead byte: at most 3 continuation bytes (80-BF) can follow one.
    var lead = n - 1
    while lead >= 0 && lead > n - 4 && b[lead] & 0xC0 == 0x80 { lead -= 1 }
    guard lead >= 0 && lead > n - 4 else { return n }
    let need: Int
    switch b[lead] {
    case 0xC2...0xDF: need = 2
    case 0xE0...0xEF: need = 3
    case 0xF0...0xF4: need = 4
    default: return n  // ASCII, or a byte that can never start a character
    }
    let have = n - lead
    if have >= need { return n }
    if have >= 2 {
        // The second byte's range depends on the lead (no overlongs, surrogates or
        // values past U+10FFFF); outside it, the lead is already a lone invalid byte.
        let second: ClosedRange<UInt8>
        switch b[lead] {
        case 0xE0: second = 0xA0...0xBF
        case 0xED: second = 0x80...0x9F
        case 0xF0: second = 0x90...0xBF
        case 0xF4: second = 0x80...0x8F
        default: second = 0x80...0xBF
        }
        if !second.contains(b[lead + 1]) { return n }
    }
    return lead
}
