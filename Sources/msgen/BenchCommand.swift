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
            with min and max. With --batch, also batched decode at each depth: that many \
            sequences stepping together (as `msgen serve` steps its streams), aggregate \
            tokens/s and the ratio to one sequence's.
            """
    )

    @OptionGroup var common: ModelOptions

    @Option(name: [.customShort("c"), .long], parsing: .upToNextOption, help: "Context depths to measure at.")
    var context: [Int] = [256, 1024, 4096, 8192]

    @Option(help: "Runs per measurement.")
    var repetitions = 3

    @Option(name: .customLong("decode-tokens"), help: "Tokens timed per decode run.")
    var decodeTokens = 32

    @Option(
        parsing: .upToNextOption,
        help: "Also decode this many sequences together, one batched step a token (e.g. --batch 16 64).")
    var batch: [Int] = []

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(help: "Also measure this machine's memory read bandwidth (reads a 256 MB buffer), to compare decode against.")
    var bandwidth = false

    func validate() throws {
        guard !context.isEmpty, context.allSatisfy({ $0 >= 1 }) else { throw MSGenError("--context depths must be ≥ 1") }
        guard repetitions >= 1, decodeTokens >= 1 else { throw MSGenError("--repetitions and --decode-tokens must be ≥ 1") }
        guard batch.allSatisfy({ $0 >= 1 }) else { throw MSGenError("--batch sizes must be ≥ 1") }
    }

    func run() throws {
        Output.setUp()
        Interrupt.install()
        common.applyThreads()
        let path = try common.path()
        let t0 = Date()
        let file = try MSZFile(path: path)
        let (lm, weights) = try openLanguageModel(file)
        let loadSeconds = Date().timeIntervalSince(t0)
        var bench = Bench(model: lm)
        bench.repetitions = repetitions
        bench.decodeTokens = decodeTokens
        bench.isCancelled = { Interrupt.requested }
        if !lm.canDecodePastContext && decodeTokens * repetitions >= lm.config.context {
            // A small model's context cannot hold every timed token: time fewer per run.
            bench.decodeTokens = (lm.config.context - 1) / repetitions
            try check(bench.decodeTokens >= 1, "--repetitions \(repetitions) does not fit this model's context of \(lm.config.context)")
            Terminal.note("note: \(bench.decodeTokens) decode tokens per run, to fit this model's context of \(lm.config.context)")
        }
        var report = Report(path: path, model: lm, loadSeconds: loadSeconds, weights: weights)
        do {
            for depth in context {
                let n = min(depth, lm.config.context)
                if !report.prefills.contains(where: { $0.tokens == n }) { report.prefills.append(try bench.prefill(n)) }
                // Past the context of a model that cannot decode there: as deep as it goes.
                let reached = bench.reachable(depth)
                if reached < depth {
                    Terminal.note("depth \(depth): past this model's context of \(lm.config.context); decode measured at depth \(reached)")
                }
                guard !report.decodes.contains(where: { $0.depth == reached }) else { continue }
                report.decodes.append(try bench.decode(depth: reached))
                if !json, let d = report.decodes.last, let p = report.prefills.last {
                    Terminal.note(
                        String(
                            format: "depth %5d: prefill %d tokens %.0f tokens/s, decode %.3f ms/token (%.0f tokens/s)",
                            d.depth, p.tokens, Double(p.tokens) / p.seconds.median,
                            d.secondsPerToken.median * 1e3, 1 / d.secondsPerToken.median))
                }
                for b in batch {
                    report.batched.append(try bench.decode(depth: reached, batch: b))
                    if !json, let d = report.batched.last {
                        Terminal.note(
                            String(
                                format: "depth %5d: %d sequences %.3f ms/step (%.0f tokens/s)", d.depth, d.batch,
                                d.secondsPerStep.median * 1e3, d.tokensPerSecond))
                    }
                }
            }
        } catch is CancellationError {
            report.interrupted = true
        }
        // After the runs, so that the probe's buffer is not in the peak RSS reported above.
        if bandwidth && !report.interrupted { report.readBandwidth = Kernels.measureReadBandwidth() }
        Output.write(json ? report.json() : report.text())
        if report.interrupted { throw ExitCode(130) }
    }

    /// What was measured (all of it, or what was done before Ctrl-C).
    struct Report {
        let path: String, model: LanguageModel, loadSeconds: Double, weights: WeightSummary
        var prefills: [Bench.Prefill] = [], decodes: [Bench.Decode] = []
        var batched: [Bench.BatchedDecode] = []
        var interrupted = false
        let rss = peakResidentBytes()
        /// GB/s (10⁹ bytes/s) this machine reads memory at, with --bandwidth.
        var readBandwidth: Double?

        /// Weight bytes one decoded token reads × tokens/s, in GB/s.
        func weightBandwidth(_ d: Bench.Decode) -> Double { Double(weights.bytesPerToken) / d.secondsPerToken.median / 1e9 }

        /// A batched run's tokens/s over one sequence's at the same depth (this run's).
        func speedup(_ b: Bench.BatchedDecode) -> Double? {
            decodes.first { $0.depth == b.depth }.map { b.tokensPerSecond * $0.secondsPerToken.median }
        }

        func json() -> String {
            func stat(_ s: Bench.Stat) -> JSONValue { .object(["median": .number(s.median), "min": .number(s.min), "max": .number(s.max)]) }
            var o: [String: JSONValue] = [
                "model": .string(path), "architecture": .string(model.config.architecture),
                "context": .number(Double(model.config.context)), "threads": .number(Double(Kernels.threads)),
                "load_seconds": .number(loadSeconds), "weight_dtype": .string(weights.dtype),
                "weight_bytes": .number(Double(weights.residentBytes)), "weight_bytes_per_token": .number(Double(weights.bytesPerToken)),
                "cpu_kernels": .string("\(Kernels.level)"), "matrix_products": .string(Kernels.productsDescription),
                "peak_rss_bytes": .number(Double(rss)),
                "prefill": .array(
                    prefills.map { p in
                        .object([
                            "tokens": .number(Double(p.tokens)), "seconds": stat(p.seconds),
                            "tokens_per_second": .number(Double(p.tokens) / p.seconds.median),
                        ])
                    }),
                "decode": .array(
                    decodes.map { d in
                        .object([
                            "depth": .number(Double(d.depth)), "seconds_per_token": stat(d.secondsPerToken),
                            "tokens_per_second": .number(1 / d.secondsPerToken.median),
                            "cache_bytes": .number(Double(d.cacheBytes)), "weight_gb_per_second": .number(weightBandwidth(d)),
                        ])
                    }),
            ]
            if !batched.isEmpty {
                o["batched_decode"] = .array(
                    batched.map { b in
                        var e: [String: JSONValue] = [
                            "depth": .number(Double(b.depth)), "batch": .number(Double(b.batch)),
                            "seconds_per_step": stat(b.secondsPerStep), "tokens_per_second": .number(b.tokensPerSecond),
                        ]
                        if let x = speedup(b) { e["speedup_over_one"] = .number(x) }
                        return .object(e)
                    })
            }
            if let readBandwidth { o["read_bandwidth_gb_per_second"] = .number(readBandwidth) }
            if interrupted { o["interrupted"] = .bool(true) }
            return JSONValue.object(o).compactText + "\n"
        }

        func text() -> String {
            var lines = [
                "model \(path): \(model.config.architecture), context \(model.config.context), \(Kernels.threads) threads",
                String(
                    format:
                        "load %.3f s; weights %@ in memory (%@ matrices, f32 vectors), %@ read per token; %@ kernels, products by %@; peak RSS %@",
                    loadSeconds, humanBytes(weights.residentBytes), weights.dtype, humanBytes(weights.bytesPerToken),
                    "\(Kernels.level)", Kernels.productsDescription, humanBytes(rss)),
                "  prefill tokens   tokens/s (median, min-max)",
            ]
            for p in prefills {
                lines.append(
                    String(
                        format: "  %14d   %8.0f (%.0f-%.0f)", p.tokens, Double(p.tokens) / p.seconds.median,
                        Double(p.tokens) / p.seconds.max, Double(p.tokens) / p.seconds.min))
            }
            lines.append("  decode depth   ms/token (median, min-max)   tokens/s   weights GB/s   cache")
            for d in decodes {
                let s = d.secondsPerToken
                lines.append(
                    String(
                        format: "  %12d   %8.3f (%.3f-%.3f)   %8.0f   %12.1f   %@", d.depth, s.median * 1e3, s.min * 1e3, s.max * 1e3,
                        1 / s.median, weightBandwidth(d), humanBytes(d.cacheBytes)))
            }
            if !batched.isEmpty {
                lines.append("  batched decode depth   sequences   ms/step (median, min-max)   tokens/s   × one sequence")
                for b in batched {
                    let s = b.secondsPerStep
                    lines.append(
                        String(
                            format: "  %20d   %9d   %8.3f (%.3f-%.3f)   %8.0f   %@", b.depth, b.batch, s.median * 1e3, s.min * 1e3,
                            s.max * 1e3, b.tokensPerSecond, speedup(b).map { String(format: "%.2f", $0) } ?? "-"))
                }
            }
            if let readBandwidth { lines.append(String(format: "memory read bandwidth %.1f GB/s (%d threads)", readBandwidth, Kernels.threads)) }
            if interrupted { lines.append("(interrupted)") }
            return lines.joined(separator: "\n") + "\n"
        }
    }
}
