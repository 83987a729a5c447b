import ArgumentParser
import Foundation
import MSFormat
import MSKernels
import MSModels
import MSTokenizer

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Classify texts with an MS-Trans encoder.",
        discussion: """
            Each TEXT argument is one input; with no TEXT, or "-", every non-empty line of \
            standard input is one. Plain output is one line per input: the label, its \
            probability (4 decimals) and the text, tab-separated (with --top K, K label/probability pairs \
            before the text). --json prints one object per input: {"label": …, "probs": \
            {label: p, …}}, with "top": [the K best labels] when K > 1 and "truncated": true when the text was longer than the model's \
            max_length and only its beginning was used (a note on stderr says so too).
            """
    )

    @Argument(help: "Texts to classify; none or \"-\" reads one per line from standard input.")
    var texts: [String] = []

    @OptionGroup var common: ModelOptions

    @Option(help: "Print the K most likely labels with their probabilities.")
    var top = 1

    @Flag(help: "Print one JSON object per input instead of tab-separated text.")
    var json = false

    func validate() throws {
        guard top >= 1 else { throw MSGenError("--top must be ≥ 1") }
    }

    func run() throws {
        Output.setUp()
        common.applyThreads()
        let inputs = try readInputs()
        Interrupt.install()
        let file = try MSZFile(path: try common.path(default: .classifier))
        let classifier = try loadClassifier(file)
        let tokenizer = try openTokenizer(file)
        let labels = classifier.labels
        let k = min(top, labels.count)

        for (index, text) in inputs.enumerated() {
            if Interrupt.requested { throw ExitCode(130) }  // between inputs
            let ids = tokenizer.encode(text)
            try check(!ids.isEmpty, "input \(index + 1) gives no tokens; there is nothing to classify")
            let result = try classifier.classify(ids)
            if result.truncated {
                Terminal.note(
                    "note: input \(index + 1) truncated from \(ids.count) to \(result.tokens) tokens (max_length \(classifier.maxTextTokens + 1) with [CLS])"
                )
            }
            // Best first; equal probabilities keep the labels' order.
            let ranked = result.probs.indices.sorted { (result.probs[$0], $1) > (result.probs[$1], $0) }
            if json {
                var o: [String: JSONValue] = [
                    "label": .string(labels[ranked[0]]),
                    "probs": .object(Dictionary(uniqueKeysWithValues: zip(labels, result.probs.map { number($0) }))),
                ]
                if top > 1 { o["top"] = .array(ranked.prefix(k).map { .string(labels[$0]) }) }
                if result.truncated { o["truncated"] = .bool(true) }
                Output.write(JSONValue.object(o).compactText + "\n")
            } else {
                let pairs = ranked.prefix(k).map { labels[$0] + "\t" + String(format: "%.4f", result.probs[$0]) }
                Output.write((pairs + [oneLine(text)]).joined(separator: "\t") + "\n")
            }
        }
    }

    /// The inputs, in order: the arguments, each "-" (or no argument at all) standing
    /// for the non-blank lines of standard input.
    func readInputs() throws -> [String] {
        var out: [String] = []
        for (i, t) in (texts.isEmpty ? ["-"] : texts).enumerated() {
            if t == "-" {
                let lines = Input.lines(try Input.standardInput())
                try check(!lines.isEmpty, "standard input has no lines to classify")
                out += lines
            } else {
                try check(!t.isEmpty, "input \(i + 1) is empty text; there is nothing to classify")
                out.append(t)
            }
        }
        return out
    }

    /// A float as JSON in its shortest form (0.873, not 0.87300002574920654).
    func number(_ x: Float) -> JSONValue { .number(Double("\(x)") ?? Double(x)) }

    /// The text as it goes on a tab-separated line: tabs and line breaks become spaces.
    func oneLine(_ s: String) -> String {
        String(s.map { $0 == "\t" || $0.isNewline ? " " : $0 })
    }
}
