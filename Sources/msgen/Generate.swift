import ArgumentParser
import Foundation
import MSFormat
import MSGen
import MSKernels
import MSTokenizer

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream a continuation of each prompt.",
        discussion: """
            Each PROMPT argument or -p is its own prompt, then each -f file's text. With none, \
            or "-", the prompt is read from standard input. A file or standard input loses one \
            trailing newline; with --lines every non-blank line of it is its own prompt. Several \
            prompts give several output blocks, each ending with a newline and separated by an \
            empty line. Text is written as it is generated; the seed and timings go to stderr. \
            Sampling order: repeat penalty, top-k, top-p, min-p, temperature (0 = greedy).
            """
    )

    @Argument(help: "Prompts; none or \"-\" reads standard input.")
    var prompts: [String] = []

    @OptionGroup var common: ModelOptions

    @Option(name: [.customShort("p"), .long], help: "A prompt (repeatable), as a PROMPT argument is.")
    var prompt: [String] = []

    @Option(name: [.customShort("f"), .long], help: "A file whose text is a prompt (repeatable; \"-\" is standard input).")
    var file: [String] = []

    @Option(name: [.customShort("n"), .customLong("max-tokens")], help: "Stop after this many generated tokens.")
    var maxTokens = 256

    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-k"), help: "Keep the K most likely tokens (0 = all).")
    var topK = 40

    @Option(name: .customLong("top-p"), help: "Keep the most likely tokens whose probabilities add up to P (1 = all).")
    var topP: Float = 0.95

    @Option(name: .customLong("min-p"), help: "Drop tokens less likely than P times the most likely one (0 = off).")
    var minP: Float = 0.05

    @Option(name: .customLong("repeat-penalty"), help: "Penalise tokens seen in the last --repeat-last-n tokens (1 = off).")
    var repeatPenalty: Float = 1.0

    @Option(name: .customLong("repeat-last-n"), help: "How many recent tokens the repeat penalty looks at.")
    var repeatLastN = 64

    // Unconditional: "-1" (llama.cpp's "random") would otherwise read as an option.
    @Option(
        name: [.customShort("s"), .long], parsing: .unconditional,
        help: "Random seed; -1 or none picks a random one (printed on stderr).", transform: Seed.parse)
    var seed: Seed?

    @Option(name: [.customShort("r"), .long], help: "Stop when this text appears (not printed); repeatable.")
    var stop: [String] = []

    @Flag(
        name: [.customShort("e"), .long],
        help: "Turn \\n, \\t, \\r, \\\\, \\\" and \\' in prompts and --stop strings into the characters (as llama.cpp's -e).")
    var escape = false

    @Flag(help: "Each line of standard input (or of a -f file) is its own prompt.")
    var lines = false

    @Flag(
        help:
            "Print JSON Lines events: one per token with its own text (--stop cuts only the plain output), then one with the stop reason and timings."
    )
    var json = false

    @Option(help: "With --json, each token event has its logprob and the N most likely tokens with theirs (\"top\").")
    var logprobs = 0

    @Flag(name: .customLong("ignore-eos"), help: "Keep generating after the end-of-text token.")
    var ignoreEOS = false

    @Flag(name: .customLong("no-echo"), help: "Do not print the prompt before its continuation.")
    var noEcho = false

    func validate() throws {
        guard maxTokens >= 0 else { throw MSGenError("--max-tokens must be ≥ 0") }
        guard temperature >= 0 else { throw MSGenError("--temperature must be ≥ 0") }
        guard topK >= 0 else { throw MSGenError("--top-k must be ≥ 0") }
        guard topP > 0 && topP <= 1 else { throw MSGenError("--top-p must be in (0, 1]") }
        guard minP >= 0 && minP <= 1 else { throw MSGenError("--min-p must be in [0, 1]") }
        guard repeatPenalty > 0 else { throw MSGenError("--repeat-penalty must be > 0") }
        guard repeatLastN >= 0 else { throw MSGenError("--repeat-last-n must be ≥ 0") }
        guard logprobs >= 0 else { throw MSGenError("--logprobs must be ≥ 0") }
        guard logprobs == 0 || json else { throw MSGenError("--logprobs needs --json (the log-probabilities are fields of its token events)") }
    }

    func run() throws {
        Output.setUp()
        common.applyThreads()
        let inputs = try readPrompts()
        Interrupt.install()
        let generator = try openGenerator(try common.path())
        var options = GenerationOptions()
        options.maxTokens = maxTokens
        options.stop = stop.map(escaped)
        options.ignoreEOS = ignoreEOS
        options.logprobs = logprobs > 0 ? logprobs : nil
        options.sampler.temperature = temperature
        options.sampler.topK = topK
        options.sampler.topP = topP
        options.sampler.minP = minP
        options.sampler.repeatPenalty = repeatPenalty
        options.sampler.repeatLastN = repeatLastN
        options.sampler.seed = seed?.value ?? UInt64.random(in: 0...UInt64(UInt32.max))
        Terminal.note("seed \(options.sampler.seed)")

        for (index, prompt) in inputs.enumerated() {
            // Tokenized once, and checked before anything is printed for it.
            let ids = try generator.promptTokens(prompt)
            if !json && index > 0 { Output.write("\n") }
            if !json && !noEcho { Output.write(prompt) }
            var reason = StopReason.maxTokens
            try generator.generate(ids, options: options, isCancelled: { Interrupt.requested }) { event in
                switch event {
                case .token(let d):
                    Output.write(json ? JSONLine.token(prompt: index, d, tokenizer: generator.tokenizer) : d.text)
                case .done(let s):
                    reason = s.stopReason
                    if json { Output.write(JSONLine.done(prompt: index, s)) } else { Output.write(s.heldBackText + "\n") }
                    Terminal.note(
                        String(
                            format: "prompt %d tokens in %.3f s; generated %d tokens in %.3f s (%.1f tokens/s); stop: %@",
                            s.promptTokens, s.prefillSeconds, s.generatedTokens, s.decodeSeconds,
                            Double(s.generatedTokens) / max(s.decodeSeconds, 1e-9), s.stopReason.rawValue))
                }
            }
            if reason == .cancelled { throw ExitCode(130) }
        }
    }

    /// The prompts to run, in order: PROMPT arguments and -p as given ("-": standard
    /// input), then each -f file; standard input when there is none at all.
    func readPrompts() throws -> [String] {
        let literal = prompts + prompt
        try check(
            !lines || literal.allSatisfy { $0 == "-" },
            "--lines splits standard input or -f files into prompts; do not also give PROMPT arguments or -p")
        var out: [String] = []
        for p in literal { out += p == "-" ? try prompts(from: "-") : [escaped(p)] }
        for f in file { out += try prompts(from: f) }
        if literal.isEmpty && file.isEmpty { out += try prompts(from: "-") }
        return out
    }

    /// The prompts of a text file or standard input ("-"): its text less one final line
    /// end, or with --lines its non-blank lines.
    func prompts(from name: String) throws -> [String] {
        let text = try Input.file(name), what = name == "-" ? "standard input" : name
        guard lines else { return [escaped(Input.withoutFinalLineEnd(text))] }
        let all = Input.lines(text, of: what)
        try check(!all.isEmpty, "\(what) has no lines to use as prompts")
        return all.map(escaped)
    }

    func escaped(_ s: String) -> String { escape ? unescape(s) : s }
}

/// A --seed value: a number, or -1 for a random seed as in llama.cpp.
struct Seed {
    let value: UInt64?

    static func parse(_ s: String) throws -> Seed {
        if s == "-1" { return Seed(value: nil) }
        guard let v = UInt64(s) else { throw MSGenError("a seed is a whole number ≥ 0, or -1 for a random one") }
        return Seed(value: v)
    }
}

/// llama.cpp's escapes (-e): \\n, \\t, \\r, \\\\, \\" and \\'; any other backslash stays as it is.
func unescape(_ s: String) -> String {
    var out = "", chars = s.makeIterator(), pendingBackslash = false
    while let c = chars.next() {
        if pendingBackslash {
            pendingBackslash = false
            switch c {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "\\", "\"", "'": out.append(c)
            default: out.append("\\"); out.append(c)
            }
        } else if c == "\\" {
            pendingBackslash = true
        } else {
            out.append(c)
        }
    }
    if pendingBackslash { out.append("\\") }
    return out
}

/// The JSON Lines events of `generate --json`.
enum JSONLine {
    /// A token event: the token's own text (never held back for a --stop string), and
    /// with --logprobs its log-probability and the most likely tokens.
    static func token(prompt: Int, _ d: Decoded, tokenizer: BPETokenizer) -> String {
        var o: [String: JSONValue] = [
            "event": .string("token"), "prompt": .number(Double(prompt)), "id": .number(Double(d.id)),
            "text": .string(d.piece),
        ]
        if let logprob = d.logprob {
            o["logprob"] = number(logprob)
            o["top"] = .array(
                d.top.map { t in
                    .object([
                        "id": .number(Double(t.id)), "text": .string(String(decoding: tokenizer.tokenBytes(t.id), as: UTF8.self)),
                        "logprob": number(t.logprob),
                    ])
                })
        }
        return encode(o)
    }

    /// A float as JSON in its shortest form (-2.3025851, not -2.302585124969482).
    static func number(_ x: Float) -> JSONValue { .number(Double("\(x)") ?? Double(x)) }

    static func done(prompt: Int, _ s: GenerationSummary) -> String {
        encode([
            "event": .string("done"), "prompt": .number(Double(prompt)), "stop_reason": .string(s.stopReason.rawValue),
            "prompt_tokens": .number(Double(s.promptTokens)), "generated_tokens": .number(Double(s.generatedTokens)),
            "prefill_seconds": .number(s.prefillSeconds), "decode_seconds": .number(s.decodeSeconds),
            "tokens_per_second": .number(Double(s.generatedTokens) / max(s.decodeSeconds, 1e-9)),
            "seed": .number(Double(s.seed)), "cache_bytes": .number(Double(s.cacheBytes)),
        ])
    }

    static func encode(_ o: [String: JSONValue]) -> String { JSONValue.object(o).compactText + "\n" }
}
