import ArgumentParser
import Foundation
import MSFormat
import MSTokenizer

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the token ids and pieces of a text.")

    @Argument(help: "The text (default: standard input).")
    var text: String?

    @Option(help: "Model whose tokenizer to use (default: the bundled model).")
    var model: String?

    @Flag(help: "Print {\"ids\": […], \"pieces\": […]} instead of one token per line.")
    var json = false

    func run() throws {
        Output.setUp()
        let input: String
        if let text { input = text } else {
            guard let s = String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8) else {
                throw MSGenError("standard input is not valid UTF-8")
            }
            input = s
        }
        let file = try MSZFile(path: try model ?? BundledModel.path())
        guard let tokenizerJSON = file.tokenizerJSON else { throw MSGenError("\(file.path) has no tokenizer") }
        let tokenizer = try BPETokenizer(json: tokenizerJSON)
        let ids = tokenizer.encode(input)
        // A piece may be part of a UTF-8 character; shown with U+FFFD for the missing part.
        let pieces = ids.map { String(decoding: tokenizer.tokenBytes($0), as: UTF8.self) }
        if json {
            Output.write(JSONValue.object(["ids": .array(ids.map { .number(Double($0)) }),
                                           "pieces": .array(pieces.map { .string($0) })]).compactText + "\n")
        } else {
            for (id, piece) in zip(ids, pieces) { Output.write(String(format: "%6d  ", id) + JSONValue.string(piece).compactText + "\n") }
        }
    }
}
