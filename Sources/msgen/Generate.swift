import ArgumentParser
import Foundation
import MSFormat
import MSGen
import MSKernels

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream a continuation of each prompt.",
        discussion: """
        Each PROMPT argument is its own prompt. With no PROMPT, or "-", the prompt is read \
        from standard input (one trailing newline removed); with --lines every non-empty \
        stdin line is its own prompt. Several prompts give several output blocks, each \
        ending with a newline and separated by an empty line. Text is written as it is \
        generated; the seed and timings go to stderr. Sampling order: repeat penalty, \
        top-k, top-p, min-p, temperature (0 = greedy).
        """
    )

    @Argument(help: "Prompts; none or \"-\" reads standard input.")
    var prompts: [String] = []

    @Option(help: "Model file (default: the bundled model, models/cst-kjv.msz).")
    var model: String?

    @Option(name: .customLong("max-tokens"), help: "Stop after this many generated tokens.")
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

    @Option(help: "Random seed (default: a random one, printed on stderr).")
    var seed: UInt64?

    @Option(help: "Stop when this text appears (not printed); repeatable.")
    var stop: [String] = []

    @Flag(help: "Each line of standard input is its own prompt.")
    var lines = false

    @Flag(help: "Print JSON Lines events (one per token, then one with the stop reason and timings).")
    var json = false

    @Flag(name: .customLong("ignore-eos"), help: "Keep generating after the end-of-text token.")
    var ignoreEOS = false

    @Flag(name: .customLong("no-echo"), help: "Do not print the prompt before its continuation.")
    var noEcho = false

    @Option(help: "Threads for matrix work (default: all cores).")
    var threads: Int?

    func validate() throws {
        guard maxTokens >= 0 else { throw MSGenError("--max-tokens must be ≥ 0") }
        guard temperature >= 0 else { throw MSGenError("--temperature must be ≥ 0") }
        guard topK >= 0 else { throw MSGenError("--top-k must be ≥ 0") }
        guard topP > 0 && topP <= 1 else { throw MSGenError("--top-p must be in (0, 1]") }
        guard minP >= 0 && minP <= 1 else { throw MSGenError("--min-p must be in [0, 1]") }
        guard repeatPenalty > 0 else { throw MSGenError("--repeat-penalty must be > 0") }
        if let threads, threads < 1 { throw MSGenError("--threads must be ≥ 1") }
    }

    func run() throws {
        Output.setUp()
        if let threads { Kernels.threads = threads }
        let inputs = try readPrompts()
        let generator = try openGenerator(model)
        var options = GenerationOptions()
        options.maxTokens = maxTokens
        options.stop = stop
        options.ignoreEOS = ignoreEOS
        options.sampler.temperature = temperature
        options.sampler.topK = topK
        options.sampler.topP = topP
        options.sampler.minP = minP
        options.sampler.repeatPenalty = repeatPenalty
        options.sampler.repeatLastN = repeatLastN
        options.sampler.seed = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
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
                    // JSON reports each token's own text; plain output what is printed.
                    Output.write(json ? JSONLine.token(prompt: index, d) : d.text)
                case .done(let s):
                    reason = s.stopReason
                    if json { Output.write(JSONLine.done(prompt: index, s)) } else { Output.write(s.heldBackText + "\n") }
                    Terminal.note(String(format: "prompt %d tokens in %.3f s; generated %d tokens in %.3f s (%.1f tokens/s); stop: %@",
                                         s.promptTokens, s.prefillSeconds, s.generatedTokens, s.decodeSeconds,
                                         Double(s.generatedTokens) / max(s.decodeSeconds, 1e-9), s.stopReason.rawValue))
                }
            }
            if reason == .cancelled { throw ExitCode(130) }
        }
    }

    /// The prompts to run, in order.
    func readPrompts() throws -> [String] {
        if !prompts.isEmpty && prompts != ["-"] {
            try check(!lines, "--lines reads prompts from standard input; do not also give PROMPT arguments")
            return prompts
        }
        let data = FileHandle.standardInput.readDataToEndOfFile()
        guard let text = String(data: data, encoding: .utf8) else { throw MSGenError("standard input is not valid UTF-8") }
        // "\r\n" is one Character in Swift, so both line ends are matched whole.
        let isLineEnd: (Character) -> Bool = { $0 == "\n" || $0 == "\r\n" }
        if lines {
            let all = text.split(whereSeparator: isLineEnd).map(String.init)
            try check(!all.isEmpty, "standard input has no lines to use as prompts")
            return all
        }
        return [text.last.map(isLineEnd) == true ? String(text.dropLast()) : text]
    }
}

/// The JSON Lines events of `generate --json`.
enum JSONLine {
    static func token(prompt: Int, _ d: Decoded) -> String {
        encode(["event": .string("token"), "prompt": .number(Double(prompt)), "id": .number(Double(d.id)), "text": .string(d.piece)])
    }

    static func done(prompt: Int, _ s: GenerationSummary) -> String {
        encode(["event": .string("done"), "prompt": .number(Double(prompt)), "stop_reason": .string(s.stopReason.rawValue),
                "prompt_tokens": .number(Double(s.promptTokens)), "generated_tokens": .number(Double(s.generatedTokens)),
                "prefill_seconds": .number(s.prefillSeconds), "decode_seconds": .number(s.decodeSeconds),
                "tokens_per_second": .number(Double(s.generatedTokens) / max(s.decodeSeconds, 1e-9)),
                "seed": .number(Double(s.seed)), "cache_bytes": .number(Double(s.cacheBytes))])
    }

    static func encode(_ o: [String: JSONValue]) -> String { JSONValue.object(o).compactText + "\n" }
}
