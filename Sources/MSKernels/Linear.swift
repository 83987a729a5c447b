import CBLAS
import CVector
import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

/// The element type a weight matrix is stored in (msgen's float dtypes; Sources/MSFormat/FORMAT.md).
public enum WeightType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8

    /// q8: blocks of 32 values along a row, each an IEEE-half scale d then 32 int8 q
    /// (value d·q), msgen's DType.q8 layout.
    public static let q8Block = 32
    public static let q8BlockBytes = 2 + 32

    /// Bytes of one row of `cols` values (cols % 32 == 0 for q8).
    public func rowBytes(cols: Int) -> Int {
        switch self {
        case .f32: 4 * cols
        case .f16, .bf16: 2 * cols
        case .q8: cols / WeightType.q8Block * WeightType.q8BlockBytes
        }
    }

    var code: Int32 {
        switch self {
        case .f32: Int32(MSGEN_WEIGHT_F32)
        case .f16: Int32(MSGEN_WEIGHT_F16)
        case .bf16: Int32(MSGEN_WEIGHT_BF16)
        case .q8: Int32(MSGEN_WEIGHT_Q8)
        }
    }
}

/// A weight matrix [rows (outputs), cols (inputs)] stored row-major in `type`, in memory
/// someone else owns (a loaded file's tensor bytes): the value keeps only the pointer.
public struct WeightMatrix: @unchecked Sendable {
    public let type: WeightType
    public let data: UnsafeRawPointer
    public let rows: Int
    public let cols: Int

    /// `data` holds rows·rowBytes bytes. q8 needs cols % 32 == 0 (DType.byteCount refuses
    /// other shapes, so a loaded tensor always qualifies).
    public init(type: WeightType, data: UnsafeRawPointer, rows: Int, cols: Int) {
        precondition(rows >= 0 && cols >= 0, "weight matrix \(rows)×\(cols)")
        precondition(type != .q8 || cols % WeightType.q8Block == 0, "q8 weight rows of \(cols) values are not whole blocks of 32")
        self.type = type
        self.data = data
        self.rows = rows
        self.cols = cols
    }

    public var rowBytes: Int { type.rowBytes(cols: cols) }
    /// The bytes the matrix takes (what stays resident).
    public var byteCount: Int { rows * rowBytes }

    /// Rows `r` of this matrix (e.g. Q, K or V of a fused QKV weight), sharing its memory.
    public func rows(_ r: Range<Int>) -> WeightMatrix {
        precondition(r.lowerBound >= 0 && r.upperBound <= rows, "rows \(r) of a \(rows)-row matrix")
        return WeightMatrix(type: type, data: data + r.lowerBound * rowBytes, rows: r.count, cols: cols)
    }
}

extension Kernels {
    /// y[rows, out] (= or +=) x[rows, in]·Wᵀ + bias, with W in its stored type: a PyTorch
    /// Linear on `rows` rows at once. Up to `matvecRows` rows read each weight row once
    /// for all of them (decode, batched decode); more rows (prefill, scoring) go to
    /// OpenBLAS's sgemm, f32 weights as they are, the others widened a tile at a time —
    /// except where OpenBLAS's kernels are narrower than the CPU's (`blasFits`): there the
    /// matrix–vector kernel takes every row count (W a block at a time in L2 against all
    /// rows of x, ~85 % of a native sgemm's speed), and q8 still widens a tile, so that
    /// x is not quantised.
    /// Rows of x and y may be strided (`xStride` ≥ in, `yStride` ≥ out).
    public static func linear(
        _ x: UnsafePointer<Float>, rows m: Int, xStride: Int? = nil, weight w: WeightMatrix, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>, yStride: Int? = nil, accumulate: Bool = false
    ) {
        let lx = xStride ?? w.cols, ly = yStride ?? w.rows
        guard m > 0, w.rows > 0 else { return }
        if m <= matvecRows || (w.type != .q8 && !blasFits(level)) {
            matvec(x, rows: m, xStride: lx, weight: w, bias: bias, into: y, yStride: ly, accumulate: accumulate)
        } else if w.type == .f32 {
            linear(
                x, rows: m, in: w.cols, xStride: lx, weight: w.data.assumingMemoryBound(to: Float.self), out: w.rows,
                bias: bias, into: y, yStride: ly, accumulate: accumulate)
        } else {
            tiled(x, rows: m, xStride: lx, weight: w, bias: bias, into: y, yStride: ly, accumulate: accumulate)
        }
    }

    /// The most rows of x that `linear` runs as matrix–vector products, for every dtype:
    /// a server's batched step (up to 64 sequences). sgemm packs all of W on every call,
    /// which for so few rows is a tenth of the product (`sgemm_incopy` 11 % of a 64-row
    /// step of the bundled CST, 2 threads); on a GPT-2-small layer set, one row, the C
    /// kernel took 21.5 ms against sgemv's 24–27, 56 ms against sgemm's 59 at 8 rows.
    public static let matvecRows = 64

    /// Each weight row read once for all m rows of x (any m; the C kernel takes 8 at a
    /// time), output rows split over the threads. q8 quantises x to q8 blocks first.
    static func matvec(
        _ x: UnsafePointer<Float>, rows m: Int, xStride lx: Int, weight w: WeightMatrix, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>, yStride ly: Int, accumulate: Bool
    ) {
        let level = Int32(Kernels.level.rawValue), k = w.cols, rb = w.rowBytes, acc: Int32 = accumulate ? 1 : 0
        // Below ~32 K weights a thread, waking another costs more than it saves.
        let minimum = max(1, (1 << 15) / max(k, 1))
        guard w.type == .q8 else {
            parallelFor(w.rows, minimum: minimum) { r in
                msgen_matvec(level, w.type.code, w.data, rb, k, r.lowerBound, r.upperBound, x, lx, m, bias, y, ly, acc)
            }
            return
        }
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: m * k) { q in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: m * k / WeightType.q8Block) { d in
                msgen_quantize_q8(x, lx, m, k, q.baseAddress!, d.baseAddress!)
                parallelFor(w.rows, minimum: minimum) { r in
                    msgen_matvec_q8(
                        level, w.data, rb, k, r.lowerBound, r.upperBound, q.baseAddress!, d.baseAddress!, m,
                        bias, y, ly, acc)
                }
            }
        }
    }

    /// Floats of W widened at a time for `tiled` (4 MB: large enough that OpenBLAS's
    /// per-call packing of x is a few % of the product, small next to any model).
    static let tileFloats = 1 << 20

    /// A tile of W's rows widened to f32 (split over the threads), then the product with
    /// the f32 tile (`linear`), tile after tile: the matrix–matrix product at about f32 speed with
    /// only a tile of f32 weights in memory. (`tileRows`: for tests, to cross tiles.)
    static func tiled(
        _ x: UnsafePointer<Float>, rows m: Int, xStride lx: Int, weight w: WeightMatrix, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>, yStride ly: Int, accumulate: Bool, tileRows: Int? = nil
    ) {
        let level = Int32(Kernels.level.rawValue), k = w.cols, n = w.rows, rb = w.rowBytes
        let tile = min(n, tileRows ?? max(64, tileFloats / max(k, 1)))
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: tile * k)
        defer { scratch.deallocate() }
        var j = 0
        while j < n {
            let t = min(tile, n - j), part = w.rows(j..<(j + t))
            parallelFor(t, minimum: max(1, (1 << 15) / max(k, 1))) { r in
                msgen_widen(level, w.type.code, part.data + r.lowerBound * rb, rb, k, r.count, scratch + r.lowerBound * k)
            }
            linear(
                x, rows: m, xStride: lx, weight: WeightMatrix(type: .f32, data: scratch, rows: t, cols: k), bias: bias.map { $0 + j },
                into: y + j, yStride: ly, accumulate: accumulate)
            j += t
        }
    }

    /// W widened to f32, row-major (for tests and tools; the kernels never widen all of it).
    public static func widen(_ w: WeightMatrix, into out: UnsafeMutablePointer<Float>) {
        msgen_widen(Int32(level.rawValue), w.type.code, w.data, w.rowBytes, w.cols, w.rows, out)
    }

    /// Memory read bandwidth in GB/s (10⁹ bytes/s): `threads` threads reading their parts
    /// of a `bytes` buffer (≫ the last-level cache, so the reads come from DRAM) with the
    /// widest loads this thread's level has, the best of `passes` passes. The buffer is
    /// resident while this runs: it adds `bytes` to the process's peak memory. On 2 MiB
    /// pages, as the weights are (MSFormat's TensorMemory): on 4 KiB pages the same reads
    /// are ~10 % slower, and decode would seem to beat the machine's limit.
    public static func measureReadBandwidth(bytes: Int = 256 << 20, threads: Int = Kernels.threads, passes: Int = 5) -> Double {
        let chunk = 256, workers = max(1, threads), huge = 1 << 21
        let part = max(chunk, bytes / workers / chunk * chunk), total = part * workers
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: huge)
        madvise(buffer, total & ~(huge - 1), MADV_HUGEPAGE)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1, count: total)  // every page mapped before timing
        let level = Int32(Kernels.level.rawValue)
        var best = Double.infinity
        for _ in 0..<max(1, passes) {
            let start = DispatchTime.now().uptimeNanoseconds
            // (msgen_read_sum returns a sum of everything it read, so no read can be left out.)
            DispatchQueue.concurrentPerform(iterations: workers) { i in _ = msgen_read_sum(level, buffer + i * part, part) }
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return Double(total) / best / 1e9
    }
}
