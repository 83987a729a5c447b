import Foundation
import MSFormat
import MSModels

/// llama-bench style measurements of a decoder, with tokenisation and sampling left out:
/// prefill throughput and per-token decode latency at several context depths.
public struct Bench {
    public struct Stat: Sendable {
        public let median: Double, min: Double, max: Double
        init(_ xs: [Double]) {
            let s = xs.sorted()
            median = s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            min = s.first!; max = s.last!
        }
    }

    public struct Prefill: Sendable { public let tokens: Int; public let seconds: Stat }
    public struct Decode: Sendable { public let depth: Int; public let secondsPerToken: Stat; public let cacheBytes: Int }
    /// `batch` sequences decoded together, one batched step a token each (what the server does).
    public struct BatchedDecode: Sendable {
        public let batch: Int, depth: Int
        public let secondsPerStep: Stat
        public var tokensPerSecond: Double { Double(batch) / secondsPerStep.median }
    }

    public let model: LanguageModel
    public var repetitions = 3
    /// Tokens timed per decode measurement.
    public var decodeTokens = 32
    /// Asked between runs and decoded tokens; once it says yes, a measurement throws
    /// `CancellationError`.
    public var isCancelled: () -> Bool = { false }

    public init(model: LanguageModel) { self.model = model }

    /// Deterministic token ids, so runs compare like with like.
    func tokens(_ n: Int, offset: Int = 0) -> [Int] {
        let v = model.config.vocabSize
        return (0..<n).map { (($0 + offset) &* 2_654_435_761) % v }
    }

    /// Seconds to prefill `n` tokens (n ≤ the context) in one batched pass.
    public func prefill(_ n: Int) throws -> Prefill {
        let ids = tokens(n)
        var times: [Double] = []
        for _ in 0..<repetitions {
            if isCancelled() { throw CancellationError() }
            let start = Date()
            _ = try model.prefill(ids, cache: model.makeCache(), logitsFor: (n - 1)..<n)
            times.append(Date().timeIntervalSince(start))
        }
        return Prefill(tokens: n, seconds: Stat(times))
    }

    /// The deepest depth at most `depth` that `decode` can measure: any for a model that
    /// decodes past its context, else one that leaves room for every timed token.
    public func reachable(_ depth: Int) -> Int {
        model.canDecodePastContext ? depth : max(0, min(depth, model.config.context - decodeTokens * repetitions))
    }

    /// Seconds per decoded token once `depth` tokens are in the cache. Depths past the
    /// context are reached by decoding (prefill fills at most the context).
    public func decode(depth: Int) throws -> Decode {
        let (caches, steps) = try decodeRuns(depth: depth, batch: 1)
        return Decode(depth: depth, secondsPerToken: steps, cacheBytes: caches[0].byteCount)
    }

    /// Seconds per batched step of `batch` sequences, each `depth` tokens deep (each its
    /// own tokens), stepping together as the server's scheduler steps them.
    public func decode(depth: Int, batch: Int) throws -> BatchedDecode {
        BatchedDecode(batch: batch, depth: depth, secondsPerStep: try decodeRuns(depth: depth, batch: batch).steps)
    }

    /// `batch` caches brought to `depth`, then --repetitions runs of `decodeTokens` steps:
    /// the caches and the seconds per step.
    func decodeRuns(depth: Int, batch: Int) throws -> (caches: [DecoderCache], steps: Stat) {
        try check(
            model.canDecodePastContext || depth + decodeTokens * repetitions <= model.config.context,
            "depth \(depth) is past this \(model.config.architecture)'s context of \(model.config.context)")
        let caches = (0..<batch).map { _ in model.makeCache() }
        let start = min(depth, model.config.context)
        // Sequence b reads the token list from offset b·depth: different text in each.
        func ids(_ n: Int, at position: Int) -> [[Int]] { (0..<batch).map { tokens(n, offset: $0 * 7919 + position) } }
        if start > 0 {
            for (b, prompt) in ids(start, at: 0).enumerated() {
                if isCancelled() { throw CancellationError() }
                _ = try model.prefill(prompt, cache: caches[b], logitsFor: (start - 1)..<start)
            }
        }
        func step(_ columns: [[Int]], _ i: Int) { _ = model.step(columns.map { $0[i] }, caches: caches) }
        let filler = ids(depth - start, at: start)
        for i in 0..<(depth - start) {
            if isCancelled() { throw CancellationError() }
            step(filler, i)
        }
        var times: [Double] = []
        let next = ids(decodeTokens * repetitions, at: depth)
        for r in 0..<repetitions {
            if isCancelled() { throw CancellationError() }
            let t0 = Date()
            for i in (r * decodeTokens)..<((r + 1) * decodeTokens) { step(next, i) }
            times.append(Date().timeIntervalSince(t0) / Double(decodeTokens))
        }
        return (caches, Stat(times))
    }
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
public func peakResidentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
        let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
    else { return 0 }
    return kb * 1024
}
