import CBLAS
import CVector
import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The numeric kernels of msgen: every BLAS call and every hand-vectorised loop lives
/// here, behind plain pointer functions, so that the models read as the math and the one
/// place to tune is small. Activations are float32; weight matrices are f32 here and in
/// their stored type (f16, bf16, q8) in Linear.swift; matrices are row-major.
public enum Kernels {
    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]): a PyTorch Linear on m rows at once.
    /// Rows of x and y may be strided (`xStride`, `yStride` ≥ k, n). OpenBLAS's sgemm
    /// (the model's layers come through the `WeightMatrix` one, which picks the kernel).
    public static func linear(
        _ x: UnsafePointer<Float>, rows m: Int, in k: Int, xStride: Int? = nil,
        weight w: UnsafePointer<Float>, out n: Int, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>, yStride: Int? = nil, accumulate: Bool = false
    ) {
        let lx = xStride ?? k, ly = yStride ?? n
        var beta: Float = accumulate ? 1 : 0
        if let bias {
            for r in 0..<m { add(bias, into: y + r * ly, count: n, overwrite: !accumulate) }
            beta = 1
        }
        gemm(m: m, n: n, k: k, alpha: 1, a: x, lda: lx, b: w, ldb: k, transposedB: true, beta: beta, c: y, ldc: ly)
    }

    /// Which matrix–matrix products run: OpenBLAS's, msgen's own (msgen_gemm), or
    /// (automatic) OpenBLAS's where its kernels are as wide as the CPU's (`blasFits`).
    public enum Products: Sendable { case automatic, blas, msgen }

    /// OpenBLAS's kernel set, by its own name ("SkylakeX", "Cooperlake", "Haswell",
    /// "Prescott", …): what it detected, or what OPENBLAS_CORETYPE asked for.
    public static let blasCore = String(cString: openblas_get_corename())

    /// Whether OpenBLAS's kernels are as wide as the vectors of `level`. Debian 12's
    /// OpenBLAS (0.3.21) falls back to its SSE3 "Prescott" kernels on CPUs newer than it
    /// knows (an Emerald Rapids Xeon: scoring 4× slower than with its Cooperlake ones);
    /// there msgen runs its own products instead.
    public static func blasFits(_ level: Level) -> Bool {
        switch level {
        case .baseline: return true
        case .avx2: return blasBits >= 256
        case .avx512, .avx512vnni: return blasBits >= 512
        }
    }

    /// Who runs the matrix–matrix products at the calling thread's level, for reports.
    public static var productsDescription: String {
        blasFits(level) ? "OpenBLAS \(blasCore)" : "msgen's own (OpenBLAS \(blasCore) is narrower)"
    }

    /// The vector width OpenBLAS's kernel set computes in (the x86-64 core names of its
    /// DYNAMIC_ARCH builds; any other: 128).
    private static let blasBits: Int = {
        switch blasCore.lowercased() {
        case "skylakex", "cooperlake", "sapphirerapids": return 512
        case "haswell", "zen", "excavator": return 256
        default: return 128
        }
    }()

    /// c[m, n] = alpha·a[m, k]·b + beta·c, row-major, with b given as [n, k] rows
    /// (`transposedB`) or as [k, n]: OpenBLAS's sgemm (or msgen's own product, see
    /// `Products`; beta 0 never reads c), the columns of c split over the
    /// threads, each part one single-threaded OpenBLAS call. So msgen has one set of
    /// worker threads: OpenBLAS's own, which yield-spin after every call, fought msgen's
    /// for the cores (on 2 cores a fifth of a server step went to the kernel's scheduler),
    /// and they stay at 1 (see `threads`).
    public static func gemm(
        m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        transposedB: Bool, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, products: Products = .automatic
    ) {
        let level = level
        let blas = products == .blas || (products == .automatic && blasFits(level))
        // Parts of at least 16 columns and ~256 K multiply-adds: less is not worth a thread.
        let parts = max(1, min(threads, n / 16, (m * n * k) >> 18))
        let step = ((n + parts - 1) / parts + 15) / 16 * 16
        parallelFor((n + step - 1) / step) { range in
            for p in range {
                let j0 = p * step, j1 = min(n, j0 + step), bj = transposedB ? b + j0 * ldb : b + j0
                if blas {
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, transposedB ? CblasTrans : CblasNoTrans, Int32(m), Int32(j1 - j0),
                        Int32(k), alpha, a, Int32(lda), bj, Int32(ldb), beta, c + j0, Int32(ldc))
                } else {
                    msgen_gemm(Int32(level.rawValue), m, j1 - j0, k, alpha, a, lda, bj, ldb, transposedB ? 1 : 0, beta, c + j0, ldc)
                }
            }
        }
    }

    /// y += x (or y = x when `overwrite`).
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count n: Int, overwrite: Bool = false) {
        if overwrite { y.update(from: x, count: n); return }
        for i in 0..<n { y[i] += x[i] }
    }

    /// out = x + y, element-wise.
    @inline(__always)
    public static func sum(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { out[i] = x[i] + y[i] }
    }

    /// LayerNorm of each of `rows` rows of `dim` values: (x − mean)/√(var + eps)·w + b.
    public static func layerNorm(
        _ x: UnsafePointer<Float>, rows: Int, dim: Int, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        eps: Float, into y: UnsafeMutablePointer<Float>
    ) {
        parallelFor(rows, minimum: 64) { range in
            for r in range { msgen_layer_norm(x + r * dim, y + r * dim, dim, weight, bias, eps) }
        }
    }

    /// Σ x[i], eight lanes at a time.
    @inline(__always)
    public static func sum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        var acc = SIMD8<Float>(), i = 0
        while i + 8 <= n { acc += load8(x + i); i += 8 }
        var s = acc.sum()
        while i < n { s += x[i]; i += 1 }
        return s
    }

    /// Exact GELU, x·Φ(x) = x·(1 + erf(x/√2))/2, in place (split over the threads when
    /// it is large). The loop is C (CVector): libm's erff is scalar and was a tenth of a
    /// prefill; CVector's erf is within 2e-7 of it.
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        parallelFor(n, minimum: 1 << 15) { r in msgen_gelu(x + r.lowerBound, r.count) }
    }

    /// GELU's tanh approximation (GPT-2's), in place. In C (CVector) for the same reason
    /// as `gelu`: libm's tanhf was a tenth of a GPT-2-small q8 decode step.
    public static func geluTanh(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        parallelFor(n, minimum: 1 << 15) { r in msgen_gelu_tanh(x + r.lowerBound, r.count) }
    }

    /// Runs `body` over [0, n) split into one contiguous range per thread, or in one go
    /// when n is below `minimum` (small work does not pay for waking threads). Ranges are
    /// disjoint, so bodies writing to their own range need no locks. The threads are
    /// msgen's persistent workers (pool.c: they stay awake between the loops of a step);
    /// a loop started while another runs (nested, or from a second thread) runs on its
    /// caller's thread alone.
    public static func parallelFor(_ n: Int, minimum: Int = 1, _ body: (Range<Int>) -> Void) {
        let workers = min(threads, n / max(minimum, 1))
        if workers <= 1 { body(0..<n); return }
        withoutActuallyEscaping(body) { body in
            var loop = Loop(n: n, body: body)
            let ran = withUnsafeMutablePointer(to: &loop) { p in
                msgen_pool_run(
                    workers,
                    { context, w, workers in
                        let loop = context!.assumingMemoryBound(to: Loop.self).pointee
                        loop.body((loop.n * w / workers)..<(loop.n * (w + 1) / workers))
                    }, p)
            }
            if ran == 0 { body(0..<n) }
        }
    }

    /// What a worker of `parallelFor` needs: the loop's length and body.
    private struct Loop {
        let n: Int
        let body: (Range<Int>) -> Void
    }

    public static func relu(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { x[i] = max(x[i], 0) }
    }

    /// The largest of n > 0 values.
    public static func maximum(_ x: UnsafePointer<Float>, count n: Int) -> Float { msgen_max(x, n) }

    /// The indices of the k largest of n values, largest first (ties: the smaller index
    /// first), NaN never (so fewer than k when fewer are numbers). In C (CVector), in two
    /// vector passes, 2 µs on a 4,096-token row: in Swift the same passes took 46 µs, its
    /// SIMD types compiled for plain x86-64.
    public static func topK(_ k: Int, of x: UnsafeBufferPointer<Float>) -> [Int] {
        guard k > 0, let base = x.baseAddress else { return [] }
        let k = min(k, x.count)
        return [Int](unsafeUninitializedCapacity: k) { ids, done in
            done = ids.baseAddress!.withMemoryRebound(to: CLong.self, capacity: k) { msgen_top_k(base, x.count, k, $0) }
        }
    }

    /// log Σ e^x[i] over n > 0 values: what a log-softmax subtracts from every logit.
    public static func logSumExp(_ x: UnsafePointer<Float>, count n: Int) -> Double {
        let m = maximum(x, count: n)
        guard m.isFinite else { return Double(m) }
        return Double(m) + log(msgen_sum_exp(x, n, m))
    }

    /// logSumExp of each of `rows` rows of n values (rows split over the threads).
    public static func logSumExp(rows: Int, of x: [Float], count n: Int) -> [Double] {
        precondition(x.count >= rows * n)
        var out = [Double](repeating: 0, count: rows)
        x.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { o in
                parallelFor(rows, minimum: 16) { r in for i in r { o[i] = logSumExp(x.baseAddress! + i * n, count: n) } }
            }
        }
        return out
    }

    /// Softmax in place, with the maximum subtracted first so exp never overflows.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count n: Int) { msgen_softmax(x, n) }

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    /// One head of attention: out[dh] = Σ_j softmax_j(q·k_j · scale) · v_j over n keys.
    /// Keys and values are rows `keyStride` / `valueStride` apart; `scores` holds n floats.
    /// With n = 0 the output is zero (nothing to attend to).
    public static func attend(
        query q: UnsafePointer<Float>, keys: UnsafePointer<Float>, keyStride: Int,
        values: UnsafePointer<Float>, valueStride: Int, count n: Int, headDim dh: Int, scale: Float,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        attendHeads(
            query: q, keys: keys, keyStride: keyStride, values: values, valueStride: valueStride, count: n, heads: 1,
            headDim: dh, scale: scale, split: false, scores: scores, into: out)
    }

    /// `attend` for every head of one query at once: head h's query, keys, values and
    /// output are the dh values from h·dh of their rows (the layout of a [q | k | v]
    /// projection and of a KV cache). Each key and value row is read once, front to back,
    /// for all heads, where one head at a time would read it in H strided passes (a
    /// 1,024-token cache of a GPT-2-small layer is 6 MB: read from DRAM each token).
    /// With `split` and enough keys, the rows (not the heads: each thread then reads one
    /// contiguous stretch of the cache, which the CPU's prefetchers follow; half of every
    /// row, as a split by heads reads, ran at a third of the speed) are divided over the
    /// threads, and the parts' softmax sums combined. `scores` holds H·n floats.
    /// (`parts`: for tests, to split into that many parts whatever the threads.)
    public static func attendHeads(
        query q: UnsafePointer<Float>, keys: UnsafePointer<Float>, keyStride: Int, values: UnsafePointer<Float>,
        valueStride: Int, count n: Int, heads H: Int, headDim dh: Int, scale: Float, split: Bool = true,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        attendHeads(
            query: q, keys: keys, keyStride: keyStride, values: values, valueStride: valueStride, count: n, heads: H,
            headDim: dh, scale: scale, scores: scores, into: out,
            // Below ~16 K floats of keys, waking another thread costs more than it saves.
            parts: split && n * H * dh >= 1 << 14 ? max(1, min(threads, n)) : 1)
    }

    static func attendHeads(
        query q: UnsafePointer<Float>, keys: UnsafePointer<Float>, keyStride: Int, values: UnsafePointer<Float>,
        valueStride: Int, count n: Int, heads H: Int, headDim dh: Int, scale: Float,
        scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, parts: Int
    ) {
        let level = Int32(level.rawValue)
        let D = H * dh
        withUnsafeTemporaryAllocation(of: Float.self, capacity: parts * (D + 2 * H)) { buffer in
            let outs = parts == 1 ? out : buffer.baseAddress!, ms = buffer.baseAddress! + parts * D, ls = ms + parts * H
            parallelFor(parts) { range in
                for p in range {
                    let j0 = n * p / parts, j1 = n * (p + 1) / parts
                    msgen_attend_part(
                        level, q, keys, keyStride, values, valueStride, j0, j1, H, dh, scale, scores + H * j0, outs + p * D,
                        ms + p * H, ls + p * H)
                }
            }
            msgen_attend_combine(parts, H, dh, outs, ms, ls, out)
        }
    }

    /// Attention of one query over a window kept in a ring of rows, all heads at once:
    /// window row j (0 ≤ j < n) is row (first + j) mod `ring` of `keys` and `values`, and
    /// its key is that row plus row j of `keyAdd` (CST's local attention: raw keys in the
    /// ring, the window positions' part of the keys added as each row is read, so that
    /// nothing is copied). Rows are `stride` floats apart, `keyAdd`'s `keyAddStride`;
    /// head h is the dh values from h·dh of each row. `scores` holds H·n floats.
    public static func attendRing(
        query q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int, ring: Int,
        first: Int, count n: Int, keyAdd: UnsafePointer<Float>, keyAddStride: Int, heads H: Int, headDim dh: Int,
        scale: Float, scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        msgen_attend_ring(
            Int32(level.rawValue), q, keys, values, stride, ring, first, keyAdd, keyAddStride, n, H, dh, scale, scores, out)
    }

    /// Causal attention of one head for `count` new queries at positions start…start+count−1
    /// over keys 0…(position): scores and weighted values as matrix products, a block of
    /// queries at a time so that the score matrix stays small. `scratch` holds
    /// block·(start+count) floats (see `causalScratch`).
    public static func causalAttention(
        queries q: UnsafePointer<Float>, queryStride: Int, keys: UnsafePointer<Float>, keyStride: Int,
        values: UnsafePointer<Float>, valueStride: Int, start: Int, count: Int, headDim dh: Int, scale: Float,
        scratch s: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        var b = 0
        while b < count {
            let rows = min(causalBlock, count - b), n = start + b + rows
            gemm(
                m: rows, n: n, k: dh, alpha: scale, a: q + b * queryStride, lda: queryStride, b: keys, ldb: keyStride,
                transposedB: true, beta: 0, c: s, ldc: n)
            for r in 0..<rows {
                let valid = start + b + r + 1, row = s + r * n
                softmax(row, count: valid)
                (row + valid).update(repeating: 0, count: n - valid)
            }
            gemm(
                m: rows, n: dh, k: n, alpha: 1, a: s, lda: n, b: values, ldb: valueStride, transposedB: false, beta: 0,
                c: out + b * outStride, ldc: outStride)
            b += rows
        }
    }

    public static let causalBlock = 128
    public static func causalScratch(keys: Int) -> Int { causalBlock * keys }

    /// Which compiled copy of the C kernels runs (CVector): each level includes the ones
    /// below it.
    public enum Level: Int, Comparable, CaseIterable, Sendable {
        case baseline = 0  // plain x86-64, or any other CPU
        case avx2 = 1  // AVX2 + FMA + F16C
        case avx512 = 2  // + AVX-512 F/BW/VL/DQ
        case avx512vnni = 3  // + AVX-512 VNNI (q8 dot products)
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        /// The best level this CPU runs.
        public static var cpu: Level { Level(rawValue: Int(msgen_cpu_level())) ?? .baseline }
    }

    /// The level this thread runs (by default `Level.cpu`; setting a higher one than the
    /// CPU's gives the CPU's). Per thread, so that a test can check a lower copy without
    /// changing other threads; kernels that split work over threads pass the caller's
    /// level to every worker.
    public static var level: Level {
        get { Level(rawValue: Int(msgen_vector_level())) ?? .baseline }
        set { msgen_vector_set_level(Int32(newValue.rawValue)) }
    }

    /// Whether this thread runs at least the AVX2 + FMA copies (setting false: the
    /// baseline ones; true: the best the CPU has).
    public static var avx2: Bool {
        get { level >= .avx2 }
        set { level = newValue ? .cpu : .baseline }
    }

    /// The number of threads msgen's kernels split their work over, process-wide (by
    /// default what OpenBLAS would have used: OPENBLAS_NUM_THREADS, else the cores). Set
    /// it only while no other thread is in a kernel. OpenBLAS itself runs single-threaded
    /// from the first use of this on (`gemm` says why).
    public static var threads: Int {
        get { threadCount.load(ordering: .relaxed) }
        set { threadCount.store(max(1, newValue), ordering: .relaxed) }
    }

    private static let threadCount: Atomic<Int> = {
        let n = max(1, Int(openblas_get_num_threads()))
        openblas_set_num_threads(1)
        return Atomic(n)
    }()
}
