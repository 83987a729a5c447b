import Foundation
import MSFormat

/// Text inputs the way every command reads them: "-" is standard input, a text file or
/// standard input loses one final line end (what `echo hi |` sends is "hi"), and --lines
/// style input is one item per non-blank line.
enum Input {
    /// All of standard input as UTF-8 (read on first use; later uses get the same text).
    static func standardInput() throws -> String {
        if let cached = stdinText { return cached }
        guard let s = String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8) else {
            throw MSGenError("standard input is not valid UTF-8")
        }
        stdinText = s
        return s
    }
    nonisolated(unsafe) private static var stdinText: String?

    /// A file's text ("-": standard input), checked to be UTF-8.
    static func file(_ path: String) throws -> String {
        if path == "-" { return try standardInput() }
        guard let s = String(data: try readFile(path), encoding: .utf8) else { throw MSGenError("\(path) is not UTF-8 text") }
        return s
    }

    /// The text without one final line end ("\n" or "\r\n").
    static func withoutFinalLineEnd(_ text: String) -> String {
        text.last.map(isLineEnd) == true ? String(text.dropLast()) : text
    }

    /// The non-empty lines of `text`, line ends removed. Lines of spaces only are skipped
    /// too, with a note saying which: they would give an input of nothing but whitespace.
    static func lines(_ text: String, of source: String = "standard input") -> [String] {
        var out: [String] = [], blank: [Int] = []
        for (i, line) in text.split(omittingEmptySubsequences: false, whereSeparator: isLineEnd).enumerated() where !line.isEmpty {
            if line.allSatisfy(\.isWhitespace) { blank.append(i + 1) } else { out.append(String(line)) }
        }
        if !blank.isEmpty {
            let which = blank.prefix(10).map(String.init).joined(separator: ", ") + (blank.count > 10 ? ", …" : "")
            Terminal.note("note: skipped \(blank.count) whitespace-only line\(blank.count == 1 ? "" : "s") of \(source) (line \(which))")
        }
        return out
    }

    /// "\r\n" is one Character in Swift, so both line ends are matched whole.
    static func isLineEnd(_ c: Character) -> Bool { c == "\n" || c == "\r\n" }
}
