import ArgumentParser
import Foundation
import MSFormat
import MSTokenizer

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the token ids and pieces of a text.")

    @Argument(help: "The text (default, or \"-\": standard input, less one final newline).")
    var text: String?

    @OptionGroup var common: ModelOptions

    @Flag(help: "Print {\"ids\": […], \"pieces\": […]} instead of one token per line.")
    var json = false

    func run() throws {
        Output.setUp()
        // As generate reads a prompt, so that the ids are the ones it would use.
        let input = try text.flatMap { $0 == "-" ? nil : $0 } ?? Input.withoutFinalLineEnd(Input.standardInput())
        let tokenizer = try openTokenizer(try MSZFile(path: try common.path()))
        let ids = tokenizer.encode(input)
        // A piece may be part of a UTF-8 character; shown with U+FFFD for the missing part.
        let pieces = ids.map { String(decoding: tokenizer.tokenBytes($0), as: UTF8.self) }
        if json {
            Output.write(
                JSONValue.object([
                    "ids": .array(ids.map { .number(Double($0)) }),
                    "pieces": .array(pieces.map { .string($0) }),
                ]).compactText + "\n")
        } else {
            for (id, piece) in zip(ids, pieces) { Output.write(String(format: "%6d  ", id) + JSONValue.string(piece).compactText + "\n") }
        }
    }
}
