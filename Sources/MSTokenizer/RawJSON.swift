import MSFormat

/// A parsed JSON value that keeps what a tokenizer needs exactly: object members in file
/// order, and strings scalar for scalar. Foundation's parsers hand back `[String: Any]`,
/// and Swift `String` keys compare by canonical equivalence, which would silently merge
/// distinct vocabulary entries such as "é" (U+00E9) and "e" + U+0301.
enum RawJSON {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([RawJSON])
    case object([(key: String, value: RawJSON)])

    /// The first member named `key` (schema keys are ASCII, so byte comparison is exact).
    subscript(key: String) -> RawJSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key.utf8.elementsEqual(key.utf8) }?.value
    }

    var isNull: Bool { if case .null = self { return true } else { return false } }
    var string: String? { if case .string(let s) = self { return s } else { return nil } }
    var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    var array: [RawJSON]? { if case .array(let a) = self { return a } else { return nil } }
    var members: [(key: String, value: RawJSON)]? { if case .object(let m) = self { return m } else { return nil } }
    var int: Int? {
        guard case .number(let d) = self, d == d.rounded(), abs(d) < 9e15 else { return nil }
        return Int(d)
    }

    static func parse(_ text: String) throws -> RawJSON {
        var text = text
        return try text.withUTF8 { bytes in
            var parser = Parser(bytes: bytes)
            let value = try parser.value(depth: 0)
            parser.skipSpace()
            guard parser.at == bytes.count else { throw parser.failure("unexpected text after the end") }
            return value
        }
    }

    private struct Parser {
        let bytes: UnsafeBufferPointer<UInt8>
        var at = 0

        func failure(_ what: String) -> MSGenError {
            MSGenError("tokenizer.json is not valid JSON: \(what) at byte \(at)")
        }

        mutating func skipSpace() {
            while at < bytes.count {
                switch bytes[at] {
                case 0x20, 0x0A, 0x0D, 0x09: at += 1
                default: return
                }
            }
        }

        mutating func expect(_ literal: StaticString) throws {
            let n = literal.utf8CodeUnitCount
            guard at + n <= bytes.count,
                UnsafeBufferPointer(start: literal.utf8Start, count: n).elementsEqual(bytes[at..<(at + n)])
            else { throw failure("unexpected character") }
            at += n
        }

        mutating func value(depth: Int) throws -> RawJSON {
            // Deep nesting only comes from hostile input; refuse it before the stack does.
            guard depth < 256 else { throw failure("nesting too deep") }
            skipSpace()
            guard at < bytes.count else { throw failure("unexpected end") }
            switch bytes[at] {
            case UInt8(ascii: "{"):
                at += 1
                var members: [(key: String, value: RawJSON)] = []
                skipSpace()
                if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
                while true {
                    skipSpace()
                    guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw failure("expected a member name") }
                    let key = try string()
                    skipSpace()
                    try expect(":")
                    members.append((key, try value(depth: depth + 1)))
                    skipSpace()
                    guard at < bytes.count else { throw failure("unexpected end") }
                    if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                    try expect("}")
                    return .object(members)
                }
            case UInt8(ascii: "["):
                at += 1
                var items: [RawJSON] = []
                skipSpace()
                if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    skipSpace()
                    guard at < bytes.count else { throw failure("unexpected end") }
                    if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                    try expect("]")
                    return .array(items)
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "n"): try expect("null"); return .null
            default: return .number(try number())
            }
        }

        mutating func number() throws -> Double {
            let start = at
            scan: while at < bytes.count {
                switch bytes[at] {
                case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"),
                    UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"):
                    at += 1
                default: break scan
                }
            }
            guard at > start, let d = Double(String(decoding: bytes[start..<at], as: UTF8.self)) else {
                throw failure("unexpected character")
            }
            return d
        }

        mutating func string() throws -> String {
            at += 1  // the opening quote
            let start = at
            // Most strings have no escapes: take their bytes as they are.
            while at < bytes.count, bytes[at] != UInt8(ascii: "\""), bytes[at] != UInt8(ascii: "\\") { at += 1 }
            guard at < bytes.count else { throw failure("unterminated string") }
            if bytes[at] == UInt8(ascii: "\"") {
                defer { at += 1 }
                return String(decoding: bytes[start..<at], as: UTF8.self)
            }
            var out = Array(bytes[start..<at])
            while true {
                guard at < bytes.count else { throw failure("unterminated string") }
                let b = bytes[at]
                at += 1
                if b == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
                guard b == UInt8(ascii: "\\") else { out.append(b); continue }
                guard at < bytes.count else { throw failure("unterminated string") }
                let e = bytes[at]
                at += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if (0xD800..<0xDC00).contains(v) {
                        // A high surrogate must be followed by an escaped low one.
                        try expect("\\u")
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate escape") }
                        v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(v) else { throw failure("unpaired surrogate escape") }
                    out.append(contentsOf: UTF8.encode(scalar)!)
                default: throw failure("bad escape")
                }
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard at + 4 <= bytes.count else { throw failure("bad \\u escape") }
            var v: UInt32 = 0
            for b in bytes[at..<(at + 4)] {
                let d: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
                default: throw failure("bad \\u escape")
                }
                v = v << 4 | UInt32(d)
            }
            at += 4
            return v
        }
    }
}
