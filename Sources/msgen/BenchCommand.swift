import ArgumentParser
import Foundation
import MSFormat
import MSGen
import MSKernels
import MSModels

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill and decode speed (no tokenizer, no sampling), like llama-bench.",
        discussion: """
        For each --context depth: prefill tokens/s of min(depth, model context) tokens in one \
        batched pass, and decode time per token with that many tokens already in the cache \
        (depths past the context are reached by decoding). Medians of --repetitions runs, \
        with min and max.
        """
    )

    @Option(help: "Model file (default: the bundled model).")
    var model: String?

    @Option(parsing: .upToNextOption, help: "Context depths to measure at.")
    var context: [Int] = [256, 1024, 4096, 8192]

    @Option(help: "Runs per measurement.")
    var repetitions = 3

    @Option(name: .customLong("decode-tokens"), help: "Tokens timed per decode run.")
    var decodeTokens = 32

    @Option(help: "Threads for matrix work (default: all cores).")
    var threads: Int?

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard !context.isEmpty, context.allSatisfy({ $0 >= 1 }) else { throw MSGenError("--context depths must be ≥ 1") }
        guard repetitions >= 1, decodeTokens >= 1 else { throw MSGenError("--repetitions and --decode-tokens must be ≥ 1") }
    }

    func run() throws {
        Output.setUp()
        if let threads { Kernels.threads = threads }
        let path = try model ?? BundledModel.path()
        let t0 = Date()
        let file = try MSZFile(path: path)
        let lm = try loadLanguageModel(file)
        let loadSeconds = Date().timeIntervalSince(t0)
        let weightBytes = file.tensors.reduce(0) { $0 + (elementCount($1.shape) ?? 0) } * 4
        var bench = Bench(model: lm)
        bench.repetitions = repetitions
        bench.decodeTokens = decodeTokens

        var prefills: [Bench.Prefill] = [], decodes: [Bench.Decode] = []
        for depth in context {
            let n = min(depth, lm.config.context)
            if !prefills.contains(where: { $0.tokens == n }) { prefills.append(try bench.prefill(n)) }
            guard lm.canDecodePastContext || depth + decodeTokens * repetitions <= lm.config.context else {
                Terminal.note("depth \(depth): skipped, past this model's context of \(lm.config.context)")
                continue
            }
            decodes.append(try bench.decode(depth: depth))
            if !json, let d = decodes.last, let p = prefills.last {
                Terminal.note(String(format: "depth %5d: prefill %d tokens %.0f tokens/s, decode %.3f ms/token (%.0f tokens/s)",
                                     depth, p.tokens, Double(p.tokens) / p.seconds.median,
                                     d.secondsPerToken.median * 1e3, 1 / d.secondsPerToken.median))
            }
        }
        let rss = peakResidentBytes()
        if json {
            func stat(_ s: Bench.Stat) -> JSONValue { .object(["median": .number(s.median), "min": .number(s.min), "max": .number(s.max)]) }
            let o: [String: JSONValue] = [
                "model": .string(path), "architecture": .string(lm.config.architecture),
                "context": .number(Double(lm.config.context)), "threads": .number(Double(Kernels.threads)),
                "load_seconds": .number(loadSeconds), "weight_bytes": .number(Double(weightBytes)),
                "peak_rss_bytes": .number(Double(rss)),
                "prefill": .array(prefills.map { p in
                    .object(["tokens": .number(Double(p.tokens)), "seconds": stat(p.seconds),
                             "tokens_per_second": .number(Double(p.tokens) / p.seconds.median)])
                }),
                "decode": .array(decodes.map { d in
                    .object(["depth": .number(Double(d.depth)), "seconds_per_token": stat(d.secondsPerToken),
                             "tokens_per_second": .number(1 / d.secondsPerToken.median),
                             "cache_bytes": .number(Double(d.cacheBytes))])
                }),
            ]
            Output.write(JSONValue.object(o).compactText + "\n")
        } else {
            print("model \(path): \(lm.config.architecture), context \(lm.config.context), \(Kernels.threads) threads")
            print(String(format: "load %.3f s; weights %@ (f32); peak RSS %@", loadSeconds, humanBytes(weightBytes), humanBytes(rss)))
            print("  prefill tokens   tokens/s (median, min-max)")
            for p in prefills {
                print(String(format: "  %14d   %8.0f (%.0f-%.0f)", p.tokens, Double(p.tokens) / p.seconds.median,
                             Double(p.tokens) / p.seconds.max, Double(p.tokens) / p.seconds.min))
            }
            print("  decode depth   ms/token (median, min-max)   tokens/s   cache")
            for d in decodes {
                let s = d.secondsPerToken
                print(String(format: "  %12d   %8.3f (%.3f-%.3f)   %8.0f   %@", d.depth, s.median * 1e3, s.min * 1e3, s.max * 1e3,
                             1 / s.median, humanBytes(d.cacheBytes)))
            }
        }
    }
}
