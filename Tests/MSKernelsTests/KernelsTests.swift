import CVector
import Foundation
import Testing

@testable import MSKernels

/// The kernels against plain loops and libm. The element-wise ones run in both their
/// copies (`avx2`: the AVX2 + FMA one where this CPU has it; false: the baseline one).
struct KernelsTests {
    @Test(arguments: [true, false]) func geluMatchesLibm(avx2: Bool) {
        Kernels.avx2 = avx2
        defer { Kernels.avx2 = true }
        if !avx2 { #expect(!Kernels.avx2) }
        let xs = (0..<20_003).map { Float($0) / 1000 - 10 } + [0, -0.0, 1e-8, -87, 87, 300, -300]
        var y = xs
        y.withUnsafeMutableBufferPointer { Kernels.gelu($0.baseAddress!, count: $0.count) }
        var worst: Float = 0
        for (x, g) in zip(xs, y) {
            let exact = Float(0.5 * Double(x) * (1 + Foundation.erf(Double(x) / 2.0.squareRoot())))
            worst = max(worst, abs(g - exact) / max(1, abs(exact)))
        }
        #expect(worst < 1e-6, "worst relative error \(worst)")
    }

    @Test(arguments: [true, false]) func geluTanhMatchesLibm(avx2: Bool) {
        Kernels.avx2 = avx2
        defer { Kernels.avx2 = true }
        let xs = (0..<20_003).map { Float($0) / 1000 - 10 } + [0, -0.0, 1e-8, -1e-8, -87, 87, 300, -300]
        var y = xs
        y.withUnsafeMutableBufferPointer { Kernels.geluTanh($0.baseAddress!, count: $0.count) }
        var worst: Float = 0
        for (x, g) in zip(xs, y) {
            let v = Double(x)
            let exact = Float(0.5 * v * (1 + Foundation.tanh(0.79788456080286536 * (v + 0.044715 * v * v * v))))
            worst = max(worst, abs(g - exact) / max(1, abs(exact)))
        }
        #expect(worst < 1e-6, "worst relative error \(worst)")
    }

    /// Softmax, log-sum-exp, maximum and sum against Double loops, at lengths that
    /// exercise the 8-lane body, the tail and the periodic widening of partial sums.
    @Test(arguments: [true, false]) func reductionsMatchDoubleLoops(avx2: Bool) {
        Kernels.avx2 = avx2
        defer { Kernels.avx2 = true }
        for n in [1, 3, 8, 13, 64, 515, 4096, 50_001] {
            let x = (0..<n).map { Float(sin(Double($0) * 12.9898) * 30) }
            let m = x.map(Double.init).max()!
            let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
            #expect(abs(Kernels.logSumExp(x, count: n) - lse) < 1e-5 * max(1, abs(lse)), "n \(n)")
            #expect(Kernels.maximum(x, count: n) == x.max()!)
            let total = x.reduce(0.0) { $0 + Double($1) }
            #expect(abs(Double(Kernels.sum(x, count: n)) - total) < 1e-5 * Double(n) * 30)
            var p = x
            p.withUnsafeMutableBufferPointer { Kernels.softmax($0.baseAddress!, count: n) }
            let worst = zip(x, p).map { abs(Double($1) - exp(Double($0) - lse)) }.max()!
            #expect(worst < 1e-6, "n \(n): worst softmax error \(worst)")
        }
        // A row holding -inf (a masked score) gives it probability zero.
        var masked: [Float] = [0, -.infinity, 1, 2, 3, 4, 5, 6, 7]
        masked.withUnsafeMutableBufferPointer { Kernels.softmax($0.baseAddress!, count: $0.count) }
        #expect(masked[1] < 1e-30 && abs(masked.reduce(0, +) - 1) < 1e-6)
    }

    /// Top-k equals the first k of a full sort (largest first, ties to the smaller index,
    /// NaN left out), in both copies: short rows (the insertion path), vocabulary-sized
    /// ones (threshold pass) with ties, rising and falling values, a partial last chunk,
    /// NaNs, a whole chunk of NaN, a row past the stack's 65,536 values, and k past the count.
    @Test(arguments: [true, false]) func topKEqualsTheSortsPrefix(avx2: Bool) {
        Kernels.avx2 = avx2
        defer { Kernels.avx2 = true }
        var rng = UInt64(7)
        func next() -> UInt64 { rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407; return rng >> 33 }
        let rows: [[Float]] = [
            (0..<300).map { _ in Float(next() % 17) },
            (0..<4096).map { _ in Float(next() % 23) },
            (0..<4096).map { Float($0) },
            (0..<4096).map { -Float($0) },
            (0..<4103).map { _ in Float(Int(next() % 2001) - 1000) / 7 },
            (0..<4096).map { $0 % 1000 == 7 ? .nan : Float(next() % 1000) / 10 },
            (0..<4096).map { (64..<96).contains($0) ? .nan : Float(next() % 1000) },
            (0..<70_000).map { _ in Float(next() % 5003) },  // more chunk maxima than the stack holds
            [3, .nan, 1],
        ]
        for l in rows {
            let sorted = l.indices.filter { !l[$0].isNaN }.sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
            for k in [1, 2, 40, 64, 299, 5000] {
                let got = l.withUnsafeBufferPointer { Kernels.topK(k, of: $0) }
                #expect(got == Array(sorted.prefix(k)), "k \(k) of \(l.count) from \(l[0])")
            }
        }
    }

    /// Many rows at once (split over the threads, which run the default copy) give each
    /// row's own value.
    @Test func logSumExpOfRowsIsEachRows() {
        let (rows, n) = (37, 100)
        let x = (0..<(rows * n)).map { Float(cos(Double($0) * 0.37) * Double($0 % 11)) }
        let each = (0..<rows).map { r in x.withUnsafeBufferPointer { Kernels.logSumExp($0.baseAddress! + r * n, count: n) } }
        #expect(Kernels.logSumExp(rows: rows, of: x, count: n) == each)
        #expect(Set(each).count == rows)
    }

    @Test(arguments: [true, false]) func layerNormMatchesDoubleLoop(avx2: Bool) {
        Kernels.avx2 = avx2
        defer { Kernels.avx2 = true }
        let (rows, dim) = (3, 37)
        let x = (0..<(rows * dim)).map { Float(($0 * 7) % 19) / 3 - 2 }
        let w = (0..<dim).map { 1 + Float($0) / 50 }, b = (0..<dim).map { Float($0 % 5) / 10 }
        var y = [Float](repeating: 0, count: rows * dim)
        Kernels.layerNorm(x, rows: rows, dim: dim, weight: w, bias: b, eps: 1e-5, into: &y)
        for r in 0..<rows {
            let row = x[(r * dim)..<((r + 1) * dim)].map(Double.init)
            let mean = row.reduce(0, +) / Double(dim)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(dim)
            for i in 0..<dim {
                let expected = (row[i] - mean) / (variance + 1e-5).squareRoot() * Double(w[i]) + Double(b[i])
                #expect(abs(Double(y[r * dim + i]) - expected) < 1e-5)
            }
        }
    }

    @Test func linearMatchesLoops() {
        let (m, k, n) = (5, 37, 19)
        let x = (0..<(m * k)).map { Float(($0 * 7) % 13) - 6 }
        let w = (0..<(n * k)).map { Float(($0 * 5) % 11) / 4 - 1 }
        let b = (0..<n).map { Float($0) / 3 }
        for rows in [1, m] {
            var y = [Float](repeating: 0, count: rows * n)
            Kernels.linear(x, rows: rows, in: k, weight: w, out: n, bias: b, into: &y)
            for r in 0..<rows {
                for j in 0..<n {
                    var s = b[j]
                    for i in 0..<k { s += x[r * k + i] * w[j * k + i] }
                    #expect(abs(y[r * n + j] - s) < 1e-4)
                }
            }
        }
    }

    /// gemm splits c's columns over the threads (here 1,001 columns: parts of 16·j and a
    /// ragged last one), with b as [n, k] rows or as [k, n], with alpha and beta, and
    /// strided a and c: every entry equals the sum in Double.
    /// OpenBLAS's product and msgen's own (msgen_gemm, in every compiled copy) against
    /// Double loops: both layouts of b, strided rows, alpha and beta, shapes off the
    /// kernel's 6-row and 2-vector tiles (and k 1); beta 0 never reads c (NaN there stays
    /// out of the result).
    @Test(arguments: [true, false], [Kernels.Products.blas, .msgen])
    func gemmMatchesLoops(transposedB: Bool, products: Kernels.Products) {
        defer { Kernels.level = .cpu }
        let levels = products == .blas ? [Kernels.Level.cpu] : Kernels.Level.allCases.filter { $0 <= .cpu }
        for level in levels {
            Kernels.level = level
            for (m, n, k, beta) in [(33, 1001, 70, Float(2)), (7, 32, 32, 0), (5, 17, 1, 1), (13, 100, 300, 0)] {
                let (lda, ldc) = (k + 5, n + 2)
                let a = (0..<(m * lda)).map { Float(($0 * 7) % 13) / 6 - 1 }
                let b = (0..<(n * k)).map { Float(($0 * 5) % 11) / 5 - 1 }
                let c0 = (0..<(m * ldc)).map { beta == 0 && $0 % ldc < n ? Float.nan : Float($0 % 3) }
                var c = c0
                Kernels.gemm(
                    m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: transposedB ? k : n, transposedB: transposedB,
                    beta: beta, c: &c, ldc: ldc, products: products)
                var worst = 0.0
                for r in 0..<m {
                    for j in 0..<n {
                        var s = 0.0
                        for i in 0..<k { s += Double(a[r * lda + i]) * Double(transposedB ? b[j * k + i] : b[i * n + j]) }
                        let before = beta == 0 ? 0 : Double(beta) * Double(c0[r * ldc + j])
                        worst = max(worst, abs(Double(c[r * ldc + j]) - (0.5 * s + before)))
                    }
                    // The padding between rows of c is left alone.
                    #expect(c[(r * ldc + n)..<(r * ldc + ldc)] == c0[(r * ldc + n)..<(r * ldc + ldc)])
                }
                #expect(worst < 1e-4, "\(level) m \(m) n \(n) k \(k)")
            }
        }
    }

    @Test func attendIsSoftmaxWeightedValues() {
        let (n, dh) = (5, 8)
        let q = (0..<dh).map { Float($0) / 8 }
        let keys = (0..<(n * dh)).map { Float(($0 * 3) % 7) / 7 }
        let values = (0..<(n * dh)).map { Float($0 % 5) }
        var out = [Float](repeating: 0, count: dh), scores = [Float](repeating: 0, count: n)
        Kernels.attend(
            query: q, keys: keys, keyStride: dh, values: values, valueStride: dh, count: n, headDim: dh,
            scale: 0.5, scores: &scores, into: &out)
        let s = (0..<n).map { j in exp(0.5 * (0..<dh).reduce(0) { $0 + Double(q[$1] * keys[j * dh + $1]) }) }
        let total = s.reduce(0, +)
        for d in 0..<dh {
            let expected = (0..<n).reduce(0.0) { $0 + s[$1] / total * Double(values[$1 * dh + d]) }
            #expect(abs(Double(out[d]) - expected) < 1e-5)
        }
    }

    /// All heads at once, in every compiled copy and split into 1, 2, 3 or 7 parts of the
    /// rows (their softmax sums combined), equal the softmax-weighted values computed in
    /// Double, head by head; unsplit, one `attend` per head gives exactly the same. Few
    /// keys, more than the parts, and many.
    @Test func attendHeadsMatchesReference() {
        let (H, dh) = (5, 24), row = H * dh + 3  // rows wider than the heads, as in a [q | k | v] row
        defer { Kernels.level = .cpu }
        for n in [1, 2, 7, 700] {
            let q = (0..<row).map { Float(($0 * 7) % 17) / 17 - 0.5 }
            let k = (0..<(n * row)).map { Float(($0 * 5) % 13) / 13 - 0.5 }
            let v = (0..<(n * row)).map { Float(($0 * 3) % 11) / 11 }
            var expected = [Double](repeating: 0, count: H * dh)
            for h in 0..<H {
                let s = (0..<n).map { j in 0.3 * (0..<dh).reduce(0.0) { $0 + Double(q[h * dh + $1] * k[j * row + h * dh + $1]) } }
                let e = s.map { exp($0 - s.max()!) }, total = e.reduce(0, +)
                for d in 0..<dh { expected[h * dh + d] = (0..<n).reduce(0.0) { $0 + e[$1] / total * Double(v[$1 * row + h * dh + d]) } }
            }
            for level in LinearTests.levels {
                Kernels.level = level
                var scores = [Float](repeating: 0, count: H * n), perHead = [Float](repeating: 0, count: H * dh)
                for h in 0..<H {
                    var one = [Float](repeating: 0, count: dh)
                    Kernels.attend(
                        query: Array(q[(h * dh)...]), keys: Array(k[(h * dh)...]), keyStride: row, values: Array(v[(h * dh)...]),
                        valueStride: row, count: n, headDim: dh, scale: 0.3, scores: &scores, into: &one)
                    perHead.replaceSubrange((h * dh)..<((h + 1) * dh), with: one)
                }
                for parts in [1, 2, 3, 7] where parts <= n {
                    var out = [Float](repeating: .nan, count: H * dh)
                    Kernels.attendHeads(
                        query: q, keys: k, keyStride: row, values: v, valueStride: row, count: n, heads: H, headDim: dh,
                        scale: 0.3, scores: &scores, into: &out, parts: parts)
                    let worst = zip(out, expected).map { abs(Double($0) - $1) }.max()!
                    #expect(worst < 1e-6, "n \(n), \(level), \(parts) parts: off by \(worst)")
                    if parts == 1 { #expect(out == perHead, "n \(n), \(level)") }
                }
            }
        }
    }

    /// The worker pool runs each part of a loop exactly once, loop after loop (workers
    /// that slept in between included), refuses a nested loop (its caller runs it alone),
    /// and parallelFor from several threads at once still covers every index once.
    @Test func workerPoolRunsEachPartOnce() {
        // Four parts whatever the machine's thread count: counts[w] += 1 from part w.
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 5)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0, count: 5)
        for round in 0..<2000 {
            if round == 1000 { usleep(5000) }  // long enough for every worker to fall asleep
            let ran = msgen_pool_run(
                4,
                { context, w, workers in
                    let c = context!.assumingMemoryBound(to: Int.self)
                    c[w] += 1
                    if w == 0 { c[4] += Int(msgen_pool_run(2, { _, _, _ in }, nil)) }  // nested: refused
                }, counts)
            // (0 only when another test's loop holds the pool; then nothing ran.)
            if ran == 0 { for w in 0..<4 { counts[w] += 1 } } else { #expect(ran == 4) }
        }
        #expect((0..<4).map { counts[$0] } == [2000, 2000, 2000, 2000])
        #expect(counts[4] == 0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<200 {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: 101)
                hits.initialize(repeating: 0, count: 101)
                Kernels.parallelFor(101) { range in for i in range { hits[i] += 1 } }
                #expect((0..<101).allSatisfy { hits[$0] == 1 })
                hits.deallocate()
            }
        }
    }

    /// Blocked causal attention equals one `attend` per query, across block edges.
    @Test func causalAttentionEqualsPerQueryAttention() {
        let (start, count, dh) = (5, 300, 8)
        let n = start + count
        let q = (0..<(count * dh)).map { Float(($0 * 7) % 17) / 17 - 0.5 }
        let k = (0..<(n * dh)).map { Float(($0 * 5) % 13) / 13 - 0.5 }
        let v = (0..<(n * dh)).map { Float(($0 * 3) % 11) / 11 }
        var out = [Float](repeating: 0, count: count * dh)
        var scratch = [Float](repeating: 0, count: Kernels.causalScratch(keys: n))
        Kernels.causalAttention(
            queries: q, queryStride: dh, keys: k, keyStride: dh, values: v, valueStride: dh,
            start: start, count: count, headDim: dh, scale: 0.7, scratch: &scratch, into: &out, outStride: dh)
        var worst: Float = 0
        var one = [Float](repeating: 0, count: dh), scores = [Float](repeating: 0, count: n)
        for i in 0..<count {
            q.withUnsafeBufferPointer { qp in
                Kernels.attend(
                    query: qp.baseAddress! + i * dh, keys: k, keyStride: dh, values: v, valueStride: dh,
                    count: start + i + 1, headDim: dh, scale: 0.7, scores: &scores, into: &one)
            }
            for d in 0..<dh { worst = max(worst, abs(one[d] - out[i * dh + d])) }
        }
        #expect(worst < 1e-5)
    }
}
