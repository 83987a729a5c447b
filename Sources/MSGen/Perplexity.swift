import Foundation
import MSFormat
import MSKernels
import MSModels
import MSTokenizer

/// Perplexity of a token stream with the windows `msgen perplexity --help` describes: windows of C tokens start
/// every S tokens, and each scores — given the tokens before them in the window — only
/// the tokens no earlier window scored. The first token is context only. Scoring uses the
/// batched forward (matrix-matrix), one window per thread.
public struct Scorer {
    public let model: LanguageModel
    /// Bytes each token stands for (0 for special tokens), for bits per byte.
    let byteLengths: [Int]

    public init(model: LanguageModel, tokenizer: BPETokenizer) {
        self.model = model
        byteLengths = (0..<model.config.vocabSize).map {
            tokenizer.specialTokenIds.contains($0) ? 0 : tokenizer.tokenBytes($0).count
        }
    }

    public struct Window: Equatable, Sendable { public let start, end, first: Int }

    /// Tokens per batched pass of `--stream` (at most the model's context): large enough
    /// for matrix–matrix speed, small enough that a chunk's logits stay a few MB.
    public static let streamChunk = 512

    /// The windows over `n` tokens: scored positions are [first, end), given [start, first).
    public static func windows(tokens n: Int, context c: Int, stride s: Int) -> [Window] {
        var out: [Window] = [], start = 0, next = 1
        while next < n {
            let end = min(start + c, n)
            if end > next { out.append(Window(start: start, end: end, first: next)); next = end }
            start += s
        }
        return out
    }

    public struct Token: Sendable { public let pos, id: Int; public let logprob: Double }

    /// What scoring one text gives.
    public struct Result: Sendable {
        public var tokens: [Token] = []
        public var bytes = 0
        public var seconds = 0.0
        /// KL(base ‖ model) per scored token and whether both put the same token on top.
        public var kl: [Double] = []
        public var sameTop = 0

        public init() {}

        public var count: Int { tokens.count }
        public var nll: Double { -tokens.reduce(0) { $0 + $1.logprob } }
        public var ppl: Double { exp(nll / Double(max(count, 1))) }
        /// Standard error of the perplexity: ppl × the standard error of the mean nll.
        public var pplError: Double {
            guard count > 1 else { return 0 }
            let mean = nll / Double(count)
            let variance = tokens.reduce(0) { $0 + ($1.logprob + mean) * ($1.logprob + mean) } / Double(count - 1)
            return ppl * (variance / Double(count)).squareRoot()
        }
        public var bitsPerByte: Double { nll / log(2) / Double(max(bytes, 1)) }

        public mutating func add(_ other: Result) {
            tokens += other.tokens; bytes += other.bytes; seconds += other.seconds
            kl += other.kl; sameTop += other.sameTop
        }
    }

    /// Scores `ids`. With `stream`, the whole text goes once through the bounded cache
    /// instead, in batched chunks. `base` adds the KL
    /// divergence of this model's distributions from base's on every scored token.
    /// `threads` windows are scored at a time, one per thread; each window's matrix
    /// products use `Kernels.threads` threads, so for one window per core set that to 1
    /// first (as `msgen perplexity` does). Scoring never changes it: it is process-wide,
    /// and changing it while other threads are in OpenBLAS alters their results.
    /// `isCancelled` is asked before each window (each token with `stream`); once it says
    /// yes, scoring throws `CancellationError` when the windows under way are done.
    public func score(
        _ ids: [Int], context c: Int, stride s: Int, stream: Bool = false, base: LanguageModel? = nil,
        threads: Int = 1, isCancelled: () -> Bool = { false },
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> Result {
        let started = Date()
        var result = Result()
        if stream {
            // One pass through the bounded cache, a batched chunk at a time: row i of a
            // chunk predicts token i + 1.
            try check(
                ids.count <= model.config.context || model.canDecodePastContext,
                "--stream: this \(model.config.architecture) cannot go past its context of \(model.config.context) tokens; score in windows instead")
            let chunk = max(1, min(model.config.context, Scorer.streamChunk))
            let cache = model.makeCache(), baseCache = base?.makeCache()
            try model.prefill(chunked: ids, cache: cache, chunk: chunk) { logits, rows in
                if isCancelled() { throw CancellationError() }
                let baseLogits = try base.map { try $0.prefill(Array(ids[rows]), cache: baseCache!, logitsFor: 0..<rows.count) }
                add(logits, baseLogits, ids: ids, positions: (rows.lowerBound + 1)..<min(rows.upperBound + 1, ids.count), to: &result)
                progress(result.count, ids.count - 1)
            }
        } else {
            // Windows are independent: thread w scores windows w, w + workers, … whole;
            // results are merged in window order at the end.
            let windows = Scorer.windows(tokens: ids.count, context: c, stride: s)
            let workers = max(1, min(threads, windows.count))
            var parts = [Swift.Result<Result, Error>](repeating: .success(Result()), count: windows.count)
            let lock = NSLock()
            var scored = 0
            parts.withUnsafeMutableBufferPointer { out in
                DispatchQueue.concurrentPerform(iterations: workers) { w in
                    for i in stride(from: w, to: windows.count, by: workers) {
                        guard !isCancelled() else { out[i] = .failure(CancellationError()); continue }
                        out[i] = Swift.Result { try scoreWindow(windows[i], ids: ids, base: base) }
                        lock.withLock {
                            scored += (try? out[i].get().count) ?? 0
                            progress(scored, ids.count - 1)
                        }
                    }
                }
            }
            for part in parts { result.add(try part.get()) }
        }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }

    /// One window: the batched forward over [start, end), scoring [first, end).
    func scoreWindow(_ w: Window, ids: [Int], base: LanguageModel?) throws -> Result {
        let window = Array(ids[w.start..<w.end])
        let rows = (w.first - w.start - 1)..<(w.end - w.start - 1)
        let logits = try model.prefill(window, cache: model.makeCache(), logitsFor: rows)
        let baseLogits = try base.map { try $0.prefill(window, cache: $0.makeCache(), logitsFor: rows) }
        var result = Result()
        add(logits, baseLogits, ids: ids, positions: w.first..<w.end, to: &result)
        return result
    }

    /// Adds to `result` what rows of logits give for the tokens at `positions` (row r
    /// predicts positions[r]): their log-probabilities and, with base logits,
    /// KL(base ‖ model) and same-top-token.
    func add(_ logits: [Float], _ baseLogits: [Float]?, ids: [Int], positions: Range<Int>, to result: inout Result) {
        let V = model.config.vocabSize
        let lse = Kernels.logSumExp(rows: positions.count, of: logits, count: V)
        for (row, pos) in positions.enumerated() {
            let id = ids[pos], at = row * V
            result.tokens.append(Token(pos: pos, id: id, logprob: Double(logits[at + id]) - lse[row]))
            result.bytes += byteLengths[id]
            if let baseLogits {
                let lp = logSoftmax(logits[at..<(at + V)]), lb = logSoftmax(baseLogits[at..<(at + V)])
                var kl = 0.0
                for i in 0..<V where lb[i] > -.infinity { kl += exp(lb[i]) * (lb[i] - lp[i]) }
                result.kl.append(max(kl, 0))
                if argmax(lb) == argmax(lp) { result.sameTop += 1 }
            }
        }
    }
}

/// log softmax in Double, so that sums over many tokens keep their precision.
func logSoftmax(_ x: ArraySlice<Float>) -> [Double] {
    let lse = x.withUnsafeBufferPointer { Kernels.logSumExp($0.baseAddress!, count: $0.count) }
    return x.map { Double($0) - lse }
}

func argmax(_ x: [Double]) -> Int {
    var best = 0
    for i in x.indices where x[i] > x[best] { best = i }
    return best
}
