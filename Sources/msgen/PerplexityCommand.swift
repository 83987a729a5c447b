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

    @Argument(help: "Text files (UTF-8); \"-\" is standard input.")
    var files: [String]

    @OptionGroup var common: ModelOptions

    @Option(name: [.customShort("c"), .long], help: "Window length in tokens (default: the model's context).")
    var context: Int?

    @Option(help: "Tokens between window starts (default: context − 1).")
    var stride: Int?

    @Flag(help: "Run each file once through the bounded cache instead of in windows.")
    var stream = false

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(name: .customLong("per-token"), help: "With --json, add \"per_token\": every scored token's position, id, text and log-probability.")
    var perToken = false

    @Option(name: .customLong("kl-base"), help: "Base model for the KL divergence (same tokenizer).")
    var klBase: String?

    func validate() throws {
        guard !perToken || json else { throw MSGenError("--per-token needs --json (the records are a field of its object)") }
    }

    /// One file's outcome: its scores, or the line saying why it could not be scored.
    typealias Scored = (name: String, ids: [Int], outcome: Swift.Result<Scorer.Result, MSGenError>)

    func run() throws {
        Output.setUp()
        // With several windows, each thread scores its own window (see below).
        let threadCount = common.threads ?? Kernels.threads  // default: all cores
        let path = try common.path()
        let file = try MSZFile(path: path)
        let lm = try loadLanguageModel(file)
        let tokenizer = try openTokenizer(file)
        let stream = self.stream || (context == nil && lm.prefersStreaming)  // retina: no context limit, one pass by default
        let C = context ?? lm.config.context
        try check(C >= 2 && C <= lm.config.context, "--context must be between 2 and the model's context (\(lm.config.context))")
        let S = stride ?? C - 1
        try check(S >= 1 && S <= C - 1, "--stride must be between 1 and context − 1 (\(C - 1)); a longer stride would leave tokens unscored")
        var base: LanguageModel?
        if let klBase {
            let b = try loadLanguageModel(try MSZFile(path: klBase))
            try check(
                b.config.vocabSize == lm.config.vocabSize, "--kl-base has a vocabulary of \(b.config.vocabSize), the model \(lm.config.vocabSize)")
            try check(stream || b.config.context >= C, "--kl-base's context (\(b.config.context)) is shorter than --context \(C)")
            base = b
        }
        // Read and tokenize everything first: a bad file is reported before any work is done,
        // and the others are still scored.
        let texts: [(name: String, ids: Swift.Result<[Int], MSGenError>)] = files.map { name in
            (name, Swift.Result { try tokens(of: name, tokenizer) }.mapError { $0 as? MSGenError ?? MSGenError("\($0)") })
        }
        Interrupt.install()
        let scorer = Scorer(model: lm, tokenizer: tokenizer)
        var results: [Scored] = []
        let started = Date()
        for (name, read) in texts {
            guard case .success(let ids) = read else {
                if case .failure(let e) = read { Terminal.note(e.message) }
                results.append((name, [], read.map { _ in Scorer.Result() }))
                continue
            }
            // Several windows: each thread scores whole windows with single-threaded BLAS, so
            // no thread waits at every matrix product and the vector work between products
            // runs on every core. One pass (a short file, --stream): all threads share it.
            let windows = stream ? 1 : Scorer.windows(tokens: ids.count, context: C, stride: S).count
            Kernels.threads = windows > 1 ? 1 : threadCount
            let r: Scorer.Result
            do {
                r = try scorer.score(
                    ids, context: C, stride: S, stream: stream, base: base, threads: windows > 1 ? threadCount : 1,
                    isCancelled: { Interrupt.requested }
                ) { done, all in
                    guard Terminal.stderrIsTTY else { return }
                    let elapsed = Date().timeIntervalSince(started)
                    let eta = done > 0 ? elapsed / Double(done) * Double(all - done) : 0
                    Terminal.progress(String(format: "%@ ETA %.0fs", (name as NSString).lastPathComponent, eta), done, all)
                }
            } catch is CancellationError {
                report(results, path: path, C: C, S: S, stream: stream, tokenizer: tokenizer, interrupted: true)
                throw ExitCode(130)
            }
            // A model with non-finite weights gives nan; that is no perplexity to print.
            if r.nll.isFinite && r.ppl.isFinite {
                results.append((name, ids, .success(r)))
            } else {
                let e = MSGenError("\(name): the model's log-probabilities are not finite (nan or inf): its weights are broken")
                Terminal.note(e.message)
                results.append((name, ids, .failure(e)))
            }
        }
        report(results, path: path, C: C, S: S, stream: stream, tokenizer: tokenizer, interrupted: false)
        if results.contains(where: { if case .failure = $0.outcome { true } else { false } }) { throw ExitCode(1) }
    }

    /// A file's tokens, or why it cannot be scored.
    func tokens(of name: String, _ tokenizer: BPETokenizer) throws -> [Int] {
        let text = try Input.file(name)
        try check(!text.isEmpty, "\(name == "-" ? "standard input" : name) is empty")
        let ids = tokenizer.encode(text)
        try check(ids.count >= 2, "\(name) has \(ids.count) token; scoring needs at least 2")
        return ids
    }

    /// Prints the results of the files scored (all of them, or those before Ctrl-C).
    func report(_ all: [Scored], path: String, C: Int, S: Int, stream: Bool, tokenizer: BPETokenizer, interrupted: Bool) {
        let scored = all.compactMap { s -> (name: String, ids: [Int], result: Scorer.Result)? in
            guard case .success(let r) = s.outcome else { return nil }
            return (s.name, s.ids, r)
        }
        var total = Scorer.Result()
        for s in scored { total.add(s.result) }
        guard !scored.isEmpty || interrupted else { return }  // every file failed: the errors said it all
        if json {
            var o = scored.isEmpty ? [:] : fields(total)
            o["model"] = .string(path)
            o["context"] = .number(Double(C)); o["stride"] = .number(Double(S)); o["stream"] = .bool(stream)
            o["files"] = .array(
                scored.map { s in
                    var f = fields(s.result)
                    f["file"] = .string(s.name)
                    return .object(f)
                })
            let errors = all.compactMap { s -> JSONValue? in
                guard case .failure(let e) = s.outcome else { return nil }
                return .object(["file": .string(s.name), "error": .string(e.message)])
            }
            if !errors.isEmpty { o["errors"] = .array(errors) }
            if interrupted { o["interrupted"] = .bool(true) }
            if perToken {  // positions are per file; "file" (its index among those scored) says which when there are several
                o["per_token"] = .array(
                    scored.enumerated().flatMap { (i, s) in
                        let text = tokenTexts(s.ids, tokenizer)
                        return s.result.tokens.map { t -> JSONValue in
                            var e: [String: JSONValue] = [
                                "pos": .number(Double(t.pos)), "id": .number(Double(t.id)),
                                "text": .string(text[t.pos]), "logprob": .number(t.logprob),
                            ]
                            if scored.count > 1 { e["file"] = .number(Double(i)) }
                            return .object(e)
                        }
                    })
            }
            Output.write(JSONValue.object(o).compactText + "\n")
        } else {
            for s in scored { Output.write(line(s.name, s.result)) }
            if scored.count > 1 { Output.write(line("total", total)) }
            if interrupted { Terminal.note("interrupted; the lines above are the files scored before it") }
        }
    }

    /// Each token's own text, in order: a token ending inside a UTF-8 character gives "",
    /// and the one completing it the whole character, so the texts concatenate to the file.
    func tokenTexts(_ ids: [Int], _ tokenizer: BPETokenizer) -> [String] {
        var detokenizer = StreamingDetokenizer(tokenizer, skipSpecial: false)
        var out = ids.map { detokenizer.push($0) }
        out[out.count - 1] += detokenizer.finish()
        return out
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
        var s = String(
            format: "%@: %d tokens, ppl %.4f ± %.4f, nll %.5f/token, %.4f bits/byte, %.2f s (%.0f tokens/s)",
            name, r.count, r.ppl, r.pplError, r.nll / Double(max(r.count, 1)), r.bitsPerByte, r.seconds,
            Double(r.count) / max(r.seconds, 1e-9))
        if let kl = fields(r)["kl_mean"]?.doubleValue, let p99 = fields(r)["kl_p99"]?.doubleValue {
            s += String(format: "; KL %.6f (p99 %.6f), same top token %.2f%%", kl, p99, 100 * Double(r.sameTop) / Double(r.kl.count))
        }
        return s + "\n"
    }
}
