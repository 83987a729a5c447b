import Foundation
import Testing

@testable import MSGen

/// The sampler's filters keep exactly the sets their definitions give, computed here
/// independently by brute force in Double.
struct SamplerTests {
    static func logits(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(rng.nextUnit() * 8 - 4) }
    }
    static func probs(_ l: [Float], _ ids: [Int]) -> [Int: Double] {
        let m = ids.map { Double(l[$0]) }.max()!
        let e = ids.map { exp(Double(l[$0]) - m) }
        let s = e.reduce(0, +)
        return Dictionary(uniqueKeysWithValues: zip(ids, e.map { $0 / s }))
    }

    @Test(arguments: [1, 5, 40, 100])
    func topKKeepsTheKHighest(k: Int) {
        let l = Self.logits(100, seed: UInt64(k))
        let kept = Sampler.candidates(l, topK: k, topP: 1, minP: 0)
        let threshold = l.sorted(by: >)[k - 1]
        #expect(Set(kept) == Set(l.indices.filter { l[$0] >= threshold }))
    }

    /// The one-pass top-k gives exactly the first k of the full sort (largest first, ties
    /// broken by the smaller id), including with many ties.
    @Test(arguments: [1, 2, 40, 299, 300])
    func largestKEqualsTheSortsPrefix(k: Int) {
        var rng = SplitMix64(seed: UInt64(k))
        let l = (0..<300).map { _ in Float(rng.next() % 17) }  // 17 values: many ties
        let sorted = l.indices.sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
        #expect(Sampler.largest(k, of: l) == Array(sorted.prefix(k)))
    }

    @Test(arguments: [0.1, 0.5, 0.9, 0.95, 0.999])
    func topPKeepsTheSmallestSetReachingP(p: Double) {
        let l = Self.logits(200, seed: 7)
        let kept = Set(Sampler.candidates(l, topK: 0, topP: Float(p), minP: 0))
        let pr = Self.probs(l, Array(l.indices))
        // Brute force: the fewest highest-probability tokens whose mass reaches p.
        let order = l.indices.sorted { pr[$0]! > pr[$1]! }
        var mass = 0.0, expected = Set<Int>()
        for i in order where mass < p { expected.insert(i); mass += pr[i]! }
        #expect(kept == expected)
    }

    @Test(arguments: [0.01, 0.05, 0.3, 0.9])
    func minPKeepsTokensAboveAFractionOfTheBest(minP: Double) {
        let l = Self.logits(300, seed: 11)
        let kept = Set(Sampler.candidates(l, topK: 0, topP: 1, minP: Float(minP)))
        let pr = Self.probs(l, Array(l.indices))
        let best = pr.values.max()!
        #expect(kept == Set(l.indices.filter { pr[$0]! >= minP * best - 1e-12 }))
    }

    @Test func filtersApplyInOrder() {
        let l = Self.logits(500, seed: 3)
        let afterK = Sampler.candidates(l, topK: 40, topP: 1, minP: 0)
        let all = Sampler.candidates(l, topK: 40, topP: 0.9, minP: 0.05)
        // top-p renormalises over the top-k survivors, min-p then trims from the tail.
        let pr = Self.probs(l, afterK)
        var mass = 0.0, topP: [Int] = []
        for i in afterK where mass < 0.9 { topP.append(i); mass += pr[i]! }
        let best = pr.values.max()!
        #expect(all == topP.filter { pr[$0]! >= 0.05 * best - 1e-12 })
    }

    @Test func greedyAndPenalty() {
        var o = SamplerOptions(); o.temperature = 0
        var s = Sampler(o)
        let l: [Float] = [1, 3, 2.9, -1]
        #expect(s.sample(l, history: []) == 1)
        o.repeatPenalty = 1.5
        s = Sampler(o)
        // 3 / 1.5 = 2 < 2.9: the repeated token loses; negative logits are multiplied.
        #expect(s.sample(l, history: [1]) == 2)
        var p = l
        Sampler.penalize(&p, history: [3, 3], penalty: 2)
        #expect(p == [1, 3, 2.9, -2])
    }

    @Test func sameSeedSameTokensDifferentSeedDifferent() {
        let l = Self.logits(1000, seed: 5)
        func run(_ seed: UInt64) -> [Int] {
            var o = SamplerOptions(); o.seed = seed; o.topK = 0; o.topP = 1; o.minP = 0; o.temperature = 1
            var s = Sampler(o)
            return (0..<50).map { _ in s.sample(l, history: []) }
        }
        #expect(run(42) == run(42))
        #expect(run(42) != run(43))
    }

    /// With no filters and temperature 1, draws follow softmax(logits).
    @Test func samplesFollowTheDistribution() {
        let l: [Float] = [0, 1, 2, 0.5]
        var o = SamplerOptions(); o.seed = 1; o.topK = 0; o.topP = 1; o.minP = 0; o.temperature = 1
        var s = Sampler(o)
        var counts = [0, 0, 0, 0]
        let n = 40_000
        for _ in 0..<n { counts[s.sample(l, history: [])] += 1 }
        let pr = Self.probs(l, [0, 1, 2, 3])
        for i in 0..<4 {
            let sd = (pr[i]! * (1 - pr[i]!) / Double(n)).squareRoot()
            #expect(abs(Double(counts[i]) / Double(n) - pr[i]!) < 5 * sd)
        }
        // Temperature sharpens: at 0.25 the best token dominates far more.
        o.temperature = 0.25; s = Sampler(o)
        let best = (0..<2000).filter { _ in s.sample(l, history: []) == 2 }.count
        #expect(Double(best) / 2000 > 0.95)
    }

    @Test func negativeRepeatLastNLooksAtNoHistory() {
        let l = Self.logits(50, seed: 3)
        var o = SamplerOptions(); o.temperature = 0; o.repeatPenalty = 100
        let best = Sampler.argmax(l)
        o.repeatLastN = -3
        var negative = Sampler(o)
        #expect(negative.sample(l, history: [best]) == best)  // as with 0: no penalty, no trap
        o.repeatLastN = 1
        var one = Sampler(o)
        #expect(one.sample(l, history: [best]) != best)
    }
}

struct StopFilterTests {
    @Test func stopAcrossPiecesIsCutAndNotPrinted() {
        var f = StopFilter(["END"])
        var out = ""
        for piece in ["Hello E", "N", "xx E", "ND tail"] {
            let (t, stopped) = f.push(piece)
            out += t
            if stopped { break }
        }
        #expect(out == "Hello ENxx ")
    }

    @Test func heldBackTextIsReleasedAtTheEnd() {
        var f = StopFilter(["\n\n"])
        let (a, s1) = f.push("line\n")
        #expect(a == "line" && !s1)
        #expect(f.finish() == "\n")
    }

    @Test func noStopsPassThrough() {
        var f = StopFilter([])
        #expect(f.push("é").0 == "é")
    }
}
