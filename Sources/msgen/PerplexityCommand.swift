import ArgumentParser
import Foundation
import MSFormat
import MSGen
import MSKernels
import MSModels
import MSTokenizer

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Score text files: perplexity ± standard error, nll, bits per byte.",
        discussion: """
        Each file is tokenized whole (no BOS; its first token is context only). Windows of \
        --context tokens start every --stride tokens, and each scores, given the tokens \
        before them in the window, the tokens no earlier window scored. --stream instead \
        runs each file once through the model's bounded cache. With --kl-base, the KL \
        divergence of this model's next-token distributions from the base model's is \
        reported too (mean, 99th percentile, same top token), e.g. to judge a q8 conversion.
        """
    )

    @Argument(help: "Text files (UTF-8).")
    var files: [String]

    @Option(help: "Model file (default: the bundled model).")
    var model: String?

    @Option(help: "Window length in tokens (default: the model's context).")
    var context: Int?

    @Option(help: "Tokens between window starts (default: context − 1).")
    var stride: Int?

    @Flag(help: "Run each file once through the bounded cache instead of in windows.")
    var stream = false

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(name: .customLong("per-token"), help: "With --json, add \"per_token\": every scored token's position, id and log-probability.")
    var perToken = false

    @Option(name: .customLong("kl-base"), help: "Base model for the KL divergence (same tokenizer).")
    var klBase: String?

    @Option(help: "Threads (default: all cores). With several windows, each thread scores its own window.")
    var threads: Int?

    func run() throws {
        Output.setUp()
        if let threads { try check(threads >= 1, "--threads must be ≥ 1") }
        let threadCount = threads ?? Kernels.threads  // default: all cores
        let path = try model ?? BundledModel.path()
        let file = try MSZFile(path: path)
        let lm = try loadLanguageModel(file)
        guard let tj = file.tokenizerJSON else { throw MSGenError("\(path) has no tokenizer") }
        let tokenizer = try BPETokenizer(json: tj)
        let C = context ?? lm.config.context
        try check(C >= 2 && C <= lm.config.context, "--context must be between 2 and the model's context (\(lm.config.context))")
        let S = stride ?? C - 1
        try check(S >= 1 && S <= C - 1, "--stride must be between 1 and context − 1 (\(C - 1)); a longer stride would leave tokens unscored")
        var base: LanguageModel?
        if let klBase {
            let b = try loadLanguageModel(try MSZFile(path: klBase))
            try check(b.config.vocabSize == lm.config.vocabSize, "--kl-base has a vocabulary of \(b.config.vocabSize), the model \(lm.config.vocabSize)")
            try check(stream || b.config.context >= C, "--kl-base's context (\(b.config.context)) is shorter than --context \(C)")
            base = b
        }
        // Read and tokenize everything first: a bad file fails before any work is done.
        let texts: [(name: String, ids: [Int])] = try files.map { name in
            let data = try readFile(name)
            try check(!data.isEmpty, "\(name) is empty")
            guard let text = String(data: data, encoding: .utf8) else { throw MSGenError("\(name) is not UTF-8 text") }
            let ids = tokenizer.encode(text)
            try check(ids.count >= 2, "\(name) has \(ids.count) token; scoring needs at least 2")
            return (name, ids)
        }
        let scorer = Scorer(model: lm, tokenizer: tokenizer)
        var results: [(String, Scorer.Result)] = []
        var total = Scorer.Result()
        let started = Date()
        for (name, ids) in texts {
            // Several windows: each thread scores whole windows with single-threaded BLAS, so
            // no thread waits at every matrix product and the vector work between products
            // runs on every core. One pass (a short file, --stream): all threads share it.
            let windows = stream ? 1 : Scorer.windows(tokens: ids.count, context: C, stride: S).count
            Kernels.threads = windows > 1 ? 1 : threadCount
            let r = try scorer.score(ids, context: C, stride: S, stream: stream, base: base,
                                     threads: windows > 1 ? threadCount : 1) { done, all in
                guard Terminal.stderrIsTTY else { return }
                let elapsed = Date().timeIntervalSince(started)
                let eta = done > 0 ? elapsed / Double(done) * Double(all - done) : 0
                Terminal.progress(String(format: "%@ ETA %.0fs", (name as NSString).lastPathComponent, eta), done, all)
            }
            results.append((name, r))
            total.add(r)
        }
        if json {
            var o = fields(total)
            o["model"] = .string(path)
            o["context"] = .number(Double(C)); o["stride"] = .number(Double(S)); o["stream"] = .bool(stream)
            o["files"] = .array(results.map { (name, r) in
                var f = fields(r)
                f["file"] = .string(name)
                return .object(f)
            })
            if perToken {  // positions are per file; "file" says which when there are several
                o["per_token"] = .array(results.enumerated().flatMap { (i, fr) in
                    fr.1.tokens.map { t -> JSONValue in
                        var e: [String: JSONValue] = ["pos": .number(Double(t.pos)), "id": .number(Double(t.id)), "logprob": .number(t.logprob)]
                        if results.count > 1 { e["file"] = .number(Double(i)) }
                        return .object(e)
                    }
                })
            }
            Output.write(JSONValue.object(o).compactText + "\n")
        } else {
            for (name, r) in results { Output.write(line(name, r)) }
            if results.count > 1 { Output.write(line("total", total)) }
        }
    }

    func fields(_ r: Scorer.Result) -> [String: JSONValue] {
        var o: [String: JSONValue] = [
            "tokens": .number(Double(r.count)), "nll": .number(r.nll), "ppl": .number(r.ppl),
            "ppl_stderr": .number(r.pplError), "bits_per_byte": .number(r.bitsPerByte), "seconds": .number(r.seconds),
            "tokens_per_second": .number(Double(r.count) / max(r.seconds, 1e-9)),
        ]
        if !r.kl.isEmpty {
            let sorted = r.kl.sorted()
            o["kl_mean"] = .number(r.kl.reduce(0, +) / Double(r.kl.count))
            o["kl_p99"] = .number(sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))])
            o["same_top"] = .number(Double(r.sameTop) / Double(r.kl.count))
        }
        return o
    }

    func line(_ name: String, _ r: Scorer.Result) -> String {
        var s = String(format: "%@: %d tokens, ppl %.4f ± %.4f, nll %.5f/token, %.4f bits/byte, %.2f s (%.0f tokens/s)",
                       name, r.count, r.ppl, r.pplError, r.nll / Double(max(r.count, 1)), r.bitsPerByte, r.seconds,
                       Double(r.count) / max(r.seconds, 1e-9))
        if let kl = fields(r)["kl_mean"]?.doubleValue, let p99 = fields(r)["kl_p99"]?.doubleValue {
            s += String(format: "; KL %.6f (p99 %.6f), same top token %.2f%%", kl, p99, 100 * Double(r.sameTop) / Double(r.kl.count))
        }
        return s + "\n"
    }
}
