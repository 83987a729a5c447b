import Foundation
import MSKernels

/// Turns next-token logits into a token, the way llama.cpp's default chain does, in
/// this order:
///
/// 1. repeat penalty over the last `repeatLastN` tokens (a positive logit is divided by
///    the penalty, a negative one multiplied);
/// 2. temperature 0 → the highest logit (greedy), and nothing below applies;
/// 3. top-k: keep the k highest logits (k = 0 keeps all);
/// 4. top-p: of those, the smallest set of highest probabilities whose sum reaches p;
/// 5. min-p: of those, the ones with probability ≥ min-p × the highest probability;
/// 6. temperature: softmax(logits / T) over what is left, and one draw from it.
///
/// Probabilities in 4–5 are the softmax of the penalised logits of what is still kept,
/// before temperature. Ties break towards the lower token id, so the result depends only
/// on the logits, the history and the seed.
public struct SamplerOptions: Sendable, Equatable {
    public var temperature: Float = 0.8
    public var topK = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    public var repeatPenalty: Float = 1.0
    public var repeatLastN = 64
    public var seed: UInt64 = 0

    public init() {}
}

public struct Sampler: Sendable {
    public let options: SamplerOptions
    var rng: SplitMix64

    public init(_ options: SamplerOptions) {
        self.options = options
        rng = SplitMix64(seed: options.seed)
    }

    /// Picks the next token from `logits` given the tokens so far.
    public mutating func sample(_ logits: [Float], history: [Int]) -> Int {
        logits.withUnsafeBufferPointer { sample($0, history: history) }
    }

    /// The same, from logits the caller holds (a row of a batch).
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>, history: [Int]) -> Int {
        guard options.repeatPenalty != 1 else { return pick(logits) }
        var l = Array(logits)  // (a copy only when the penalty changes some)
        Sampler.penalize(&l, history: history.suffix(max(options.repeatLastN, 0)), penalty: options.repeatPenalty)
        return l.withUnsafeBufferPointer { pick($0) }
    }

    /// Steps 2–6 on the penalised logits.
    mutating func pick(_ l: UnsafeBufferPointer<Float>) -> Int {
        if options.temperature <= 0 { return Sampler.argmax(l) }
        let kept = Sampler.candidates(l, topK: options.topK, topP: options.topP, minP: options.minP)
        // Temperature last: softmax(l / T) over the survivors, then one uniform draw.
        let m = kept.map { l[$0] }.max()!
        let weights = kept.map { Double(((l[$0] - m) / options.temperature)).exp }
        var u = rng.nextUnit() * weights.reduce(0, +)
        for (id, w) in zip(kept, weights) {
            u -= w
            if u < 0 { return id }
        }
        return kept.last!
    }

    static func penalize(_ l: inout [Float], history: ArraySlice<Int>, penalty: Float) {
        guard penalty != 1 else { return }
        for id in Set(history) where id >= 0 && id < l.count {
            l[id] = l[id] > 0 ? l[id] / penalty : l[id] * penalty
        }
    }

    static func argmax<C: RandomAccessCollection>(_ l: C) -> Int where C.Element == Float, C.Index == Int {
        var best = 0
        for i in l.indices where l[i] > l[best] { best = i }
        return best
    }

    /// The token ids that survive top-k, top-p and min-p (steps 3–5), highest first.
    public static func candidates<C: RandomAccessCollection>(_ l: C, topK: Int, topP: Float, minP: Float) -> [Int]
    where C.Element == Float, C.Index == Int {
        var ids =
            topK > 0 && topK < l.count
            ? largest(topK, of: l)
            : l.indices.sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
        let m = l[ids[0]]
        let e = ids.map { Double(l[$0] - m).exp }
        let total = e.reduce(0, +)
        if topP < 1 {
            var sum = 0.0, keep = ids.count
            for (i, x) in e.enumerated() {
                sum += x / total
                if sum >= Double(topP) { keep = i + 1; break }
            }
            ids.removeSubrange(keep...)
        }
        if minP > 0 {
            // p_i ≥ minP·p_max  ⇔  e_i ≥ minP·e_max, and e_max = 1.
            let keep = e.prefix(ids.count).prefix { $0 >= Double(minP) }.count
            ids.removeSubrange(max(keep, 1)...)
        }
        return ids
    }
}

extension Sampler {
    /// The ids of the k largest logits, largest first (ties: the smaller id first; NaN
    /// never), by Kernels.topK: sorting the whole vocabulary for every token of every
    /// sequence was most of a batched server step's time, and a one-pass sorted list of k
    /// in Swift still took ~28 µs per 4,096-token row, a seventh of a 64-sequence step.
    static func largest<C: RandomAccessCollection>(_ k: Int, of l: C) -> [Int] where C.Element == Float, C.Index == Int {
        l.withContiguousStorageIfAvailable { Kernels.topK(k, of: $0) } ?? Array(l).withUnsafeBufferPointer { Kernels.topK(k, of: $0) }
    }
}

/// SplitMix64: tiny, fast, and the same numbers on every machine for a given seed (the
/// tests use it too, so that a failing random case can be reproduced).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

extension Double {
    var exp: Double { Foundation.exp(self) }
}
