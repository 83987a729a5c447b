import CVector
import Foundation
import Testing

@testable import MSKernels

/// The weight-matrix kernels (linear.c through Kernels.linear) against a plain Double
/// reference on the weights widened in Swift, for every dtype, every level this CPU runs,
/// both paths (matrix–vector for few rows, widened tiles + sgemm for many), odd shapes,
/// bias and accumulation on and off.
///
/// Tolerances, from how each path rounds (u = 2⁻²⁴, S = Σ|x_i·w_i| + |bias| + |y₀|):
/// - Weights are widened exactly (f16, bf16 and d·q are all floats), so the only error
///   besides q8's is float summation.
/// - matvec: each of the VW ≥ 8 lanes sums ⌈k/VW⌉ terms one after another, then a tree of
///   ≤ 4 levels joins the lanes, then bias and y₀ are added: error ≤ (k/8 + 7)·u·S with
///   FMA. The baseline copy has no FMA (a rounding per product too): doubled, and padded,
///   2·(k/8 + 10)·u·S.
/// - tiled: OpenBLAS's sgemm sums in an order of its own; the order-free bound is
///   (k + 2)·u·S (Higham's γ_k); with the bias added first, 2·(k + 10)·u·S.
/// - q8 also quantises x per block of 32: |x − d_x·q_x| ≤ d_x/2 with d_x = max|x|/127
///   (×(1 + 10⁻³) for the rounding of x/d_x), so the dot product moves by at most
///   Σ_blocks max|x_b|/254 · Σ_{i∈b}|w_i|; added to the float bound above.
struct LinearTests {
    static let levels = Kernels.Level.allCases.filter { $0 <= .cpu }

    /// A weight matrix with random contents in `type`, owning its bytes.
    final class Weights {
        let type: WeightType, rows: Int, cols: Int
        let bytes: UnsafeMutableRawPointer
        var matrix: WeightMatrix { WeightMatrix(type: type, data: bytes, rows: rows, cols: cols) }

        init(_ type: WeightType, rows: Int, cols: Int, rng: inout Random) {
            self.type = type
            self.rows = rows
            self.cols = cols
            let size = max(1, rows * type.rowBytes(cols: cols))
            bytes = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
            for j in 0..<rows {
                let row = bytes + j * type.rowBytes(cols: cols)
                switch type {
                case .f32: for i in 0..<cols { row.storeBytes(of: rng.float(), toByteOffset: 4 * i, as: Float.self) }
                case .f16: for i in 0..<cols { row.storeBytes(of: Float16(rng.float()).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
                case .bf16:
                    for i in 0..<cols {
                        row.storeBytes(of: UInt16(truncatingIfNeeded: rng.float().bitPattern >> 16), toByteOffset: 2 * i, as: UInt16.self)
                    }
                case .q8:
                    for b in 0..<(cols / 32) {
                        let block = row + 34 * b
                        block.storeBytes(of: Float16(0.001 + 0.02 * abs(rng.float())).bitPattern, as: UInt16.self)
                        // The full int8 range, −128 included (a file may hold it; the quantiser never makes it).
                        for i in 0..<32 { block.storeBytes(of: Int8(truncatingIfNeeded: rng.next()), toByteOffset: 2 + i, as: Int8.self) }
                    }
                }
            }
        }
        deinit { bytes.deallocate() }

        /// W[j, i] as a float, decoded here independently of the C kernels.
        func value(_ j: Int, _ i: Int) -> Float {
            let row = UnsafeRawPointer(bytes) + j * type.rowBytes(cols: cols)
            switch type {
            case .f32: return row.load(fromByteOffset: 4 * i, as: Float.self)
            case .f16: return Float(Float16(bitPattern: row.load(fromByteOffset: 2 * i, as: UInt16.self)))
            case .bf16: return Float(bitPattern: UInt32(row.load(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
            case .q8:
                let block = row + 34 * (i / 32)
                return Float(Float16(bitPattern: block.load(as: UInt16.self))) * Float(block.load(fromByteOffset: 2 + i % 32, as: Int8.self))
            }
        }
    }

    enum Path { case entry, matvec, tiled(tileRows: Int) }

    /// Runs one product and checks every output against the reference and its bound.
    func check(
        _ type: WeightType, rows m: Int, out n: Int, in k: Int, bias useBias: Bool, accumulate: Bool,
        path: Path, level: Kernels.Level, rng: inout Random, label: String
    ) {
        let w = Weights(type, rows: n, cols: k, rng: &rng)
        // Strided rows of x and y (stride = width + 3), to check the strides are honoured.
        let lx = k + 3, ly = n + 3
        let x = (0..<(m * lx)).map { _ in rng.float() }
        let bias = (0..<n).map { _ in rng.float() }
        let y0 = (0..<(m * ly)).map { _ in rng.float() }
        var y = y0
        Kernels.level = level
        defer { Kernels.level = .cpu }
        bias.withUnsafeBufferPointer { b in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    let bp = useBias ? b.baseAddress! : nil
                    switch path {
                    case .entry:
                        Kernels.linear(
                            xp.baseAddress!, rows: m, xStride: lx, weight: w.matrix, bias: bp, into: yp.baseAddress!, yStride: ly,
                            accumulate: accumulate)
                    case .matvec:
                        Kernels.matvec(
                            xp.baseAddress!, rows: m, xStride: lx, weight: w.matrix, bias: bp, into: yp.baseAddress!, yStride: ly,
                            accumulate: accumulate)
                    case .tiled(let t):
                        Kernels.tiled(
                            xp.baseAddress!, rows: m, xStride: lx, weight: w.matrix, bias: bp, into: yp.baseAddress!, yStride: ly,
                            accumulate: accumulate, tileRows: t)
                    }
                }
            }
        }
        let u = 1.0 / Double(1 << 24)
        let floatFactor: Double
        switch path {
        case .tiled: floatFactor = 2 * (Double(k) + 10) * u
        case .matvec: floatFactor = 2 * (Double(k) / 8 + 10) * u
        case .entry: floatFactor = 2 * (Double(k) + 10) * u  // either path, depending on m and type
        }
        // Whether this run quantised x (q8 through the matrix–vector kernel).
        let quantises: Bool
        switch path {
        case .matvec: quantises = type == .q8
        case .entry: quantises = type == .q8 && m <= Kernels.matvecRows
        case .tiled: quantises = false
        }
        var worst = 0.0, failures = 0
        for r in 0..<m {
            for j in 0..<n {
                var exact = 0.0, size = 0.0, quantisation = 0.0
                for i in 0..<k {
                    let p = Double(x[r * lx + i]) * Double(w.value(j, i))
                    exact += p
                    size += abs(p)
                }
                if quantises {
                    for b in 0..<(k / 32) {
                        let amax = (0..<32).map { abs(Double(x[r * lx + b * 32 + $0])) }.max()!
                        let wsum = (0..<32).reduce(0.0) { $0 + abs(Double(w.value(j, b * 32 + $1))) }
                        quantisation += amax / 254 * wsum * 1.001
                    }
                }
                if useBias { exact += Double(bias[j]); size += abs(Double(bias[j])) }
                if accumulate { exact += Double(y0[r * ly + j]); size += abs(Double(y0[r * ly + j])) }
                let error = abs(Double(y[r * ly + j]) - exact), bound = quantisation + floatFactor * size
                worst = max(worst, error / max(bound, .leastNormalMagnitude))
                if !(error <= bound) { failures += 1 }
            }
            // Padding between strided rows is left alone.
            for j in n..<ly { if y[r * ly + j] != y0[r * ly + j] { failures += 1 } }
        }
        #expect(failures == 0, "\(label): \(failures) outputs outside the bound (worst error/bound \(worst))")
    }

    /// Random shapes through the matrix–vector kernels: 1…9 rows of x (9 runs as 8 + 1),
    /// k not a multiple of 8, 16 or 32 (q8: whole blocks only), n not a multiple of the
    /// 4- or 2-row unrolling.
    @Test(arguments: WeightType.allCases) func matvecMatchesReference(type: WeightType) {
        var rng = Random(seed: 0x5eed + UInt64(type.code))
        for level in Self.levels {
            for case_ in 0..<60 {
                let m = 1 + case_ % 9
                let n = 1 + Int(rng.next() % 23)
                let k = type == .q8 ? 32 * (1 + Int(rng.next() % 9)) : 1 + Int(rng.next() % 300)
                let bias = rng.next() % 2 == 0, accumulate = rng.next() % 2 == 0
                check(
                    type, rows: m, out: n, in: k, bias: bias, accumulate: accumulate, path: .matvec, level: level, rng: &rng,
                    label: "\(type) \(level) m \(m) n \(n) k \(k) bias \(bias) accumulate \(accumulate)")
            }
        }
    }

    /// Fixed edge shapes: one column, exactly one vector, one over, the 32-wide q8 block, and
    /// a long row; around the single-row kernels' unrolling (four 16-float vectors = 64
    /// values; q8: two steps of two blocks = 128 values, with 1–3 blocks left over; the
    /// one-row VNNI kernel's groups of eight blocks, 256 values, alone, with 1–7 blocks
    /// left over, an odd number of groups, and past its 8,192-value limit).
    @Test(arguments: WeightType.allCases) func matvecEdgeShapes(type: WeightType) {
        var rng = Random(seed: 7)
        // (3072: GPT-2's d_ff)
        let q8ks = [32, 64, 96, 128, 160, 224, 256, 288, 480, 512, 800, 3072, 8192, 8224]
        let ks = type == .q8 ? q8ks : [1, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 3075]
        for level in Self.levels {
            for k in ks {
                for (m, n) in [(1, 1), (1, 4), (1, 5), (2, 7), (4, 3), (8, 2), (9, 9)] {
                    check(
                        type, rows: m, out: n, in: k, bias: true, accumulate: false, path: .matvec, level: level, rng: &rng,
                        label: "\(type) \(level) m \(m) n \(n) k \(k)")
                }
            }
        }
    }

    /// More rows than a batched step's (the whole of a prefill or a scoring window runs
    /// through the matrix–vector kernel where OpenBLAS's kernels are narrower than the
    /// CPU's): W read a block at a time against eight rows of x after another.
    @Test(arguments: WeightType.allCases) func matvecTakesAnyRowCount(type: WeightType) {
        var rng = Random(seed: 41 + UInt64(type.code))
        for level in Self.levels {
            for (m, n, k) in [(65, 19, 64), (130, 300, 96), (200, 7, 288)] {
                let kk = type == .q8 ? k : k + 3
                check(
                    type, rows: m, out: n, in: kk, bias: m % 2 == 0, accumulate: m % 5 == 0, path: .matvec, level: level,
                    rng: &rng, label: "\(type) \(level) m \(m) n \(n) k \(kk)")
            }
        }
    }

    /// Many rows through widened tiles + the f32 product, with tiles small enough that several are
    /// needed and the last one is partial.
    @Test(arguments: WeightType.allCases) func tiledMatchesReference(type: WeightType) {
        var rng = Random(seed: 99 + UInt64(type.code))
        for level in Self.levels {
            for (m, n, k, tile) in [(9, 10, 64, 3), (33, 29, 96, 8), (17, 70, 160, 64), (12, 5, 32, 100), (130, 41, 64, 16)] {
                let kk = type == .q8 ? k : k + 5
                for (bias, accumulate) in [(false, false), (true, false), (true, true), (false, true)] {
                    check(
                        type, rows: m, out: n, in: kk, bias: bias, accumulate: accumulate, path: .tiled(tileRows: tile), level: level,
                        rng: &rng, label: "\(type) \(level) m \(m) n \(n) k \(kk) tile \(tile)")
                }
            }
        }
    }

    /// The public entry point picks a path by rows and type: 1, 8 (matvec), 9 and 70 (tiled
    /// or OpenBLAS) rows.
    @Test(arguments: WeightType.allCases) func linearEntryMatchesReference(type: WeightType) {
        var rng = Random(seed: 3)
        for m in [1, 2, 8, 9, 70] {
            check(
                type, rows: m, out: 37, in: 128, bias: m % 2 == 0, accumulate: m % 3 == 0, path: .entry, level: .cpu, rng: &rng,
                label: "\(type) m \(m)")
        }
    }

    /// Output rows split over the threads run the caller's level: at the baseline level the
    /// split product is bit-identical to one row at a time (each output's sum runs in the
    /// same order), which a worker running a wider copy would not be.
    @Test(arguments: WeightType.allCases) func threadsRunTheCallersLevel(type: WeightType) {
        // (With one thread there is no split to check: nothing to test on such a machine.)
        guard Kernels.threads > 1 else { return }
        var rng = Random(seed: 11)
        let (n, k) = (600, 256)  // 600·256 weights: split over every thread
        let w = Weights(type, rows: n, cols: k, rng: &rng)
        let x = (0..<k).map { _ in rng.float() }
        var whole = [Float](repeating: 0, count: n), single = [Float](repeating: 0, count: n)
        Kernels.level = .baseline
        defer { Kernels.level = .cpu }
        Kernels.matvec(x, rows: 1, xStride: k, weight: w.matrix, bias: nil, into: &whole, yStride: n, accumulate: false)
        for j in 0..<n {
            single.withUnsafeMutableBufferPointer { s in
                Kernels.matvec(
                    x, rows: 1, xStride: k, weight: w.matrix.rows(j..<(j + 1)), bias: nil, into: s.baseAddress! + j, yStride: 1,
                    accumulate: false)
            }
        }
        #expect(whole == single)
    }

    /// A row range of a matrix is those rows (fused Q/K/V weights are split this way).
    @Test(arguments: WeightType.allCases) func rowRangeIsThoseRows(type: WeightType) {
        var rng = Random(seed: 5)
        let w = Weights(type, rows: 9, cols: 64, rng: &rng)
        let part = w.matrix.rows(3..<7)
        #expect(part.rows == 4 && part.cols == 64 && part.byteCount == 4 * w.matrix.rowBytes)
        var all = [Float](repeating: 0, count: 9 * 64), some = [Float](repeating: 0, count: 4 * 64)
        Kernels.widen(w.matrix, into: &all)
        Kernels.widen(part, into: &some)
        #expect(Array(all[(3 * 64)..<(7 * 64)]) == some)
        #expect(some[70] == w.value(4, 6))
    }

    /// f16 conversion of every special kind (subnormals, infinities, NaN, −0) in every copy,
    /// against Swift's Float16.
    @Test func f16WidensEveryKindOfValue() {
        let patterns: [UInt16] = [
            0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00, 0x3555, 0x8123,
            0x1234, 0x5678, 0xabcd,
        ]
        for level in Self.levels {
            Kernels.level = level
            var out = [Float](repeating: 0, count: patterns.count)
            patterns.withUnsafeBytes { p in
                Kernels.widen(WeightMatrix(type: .f16, data: p.baseAddress!, rows: 1, cols: patterns.count), into: &out)
            }
            for (h, f) in zip(patterns, out) {
                let expected = Float(Float16(bitPattern: h))
                #expect(expected.isNaN ? f.isNaN : f.bitPattern == expected.bitPattern, "\(level) \(String(h, radix: 16)) → \(f)")
            }
        }
        Kernels.level = .cpu
    }

    /// The bandwidth probe reads every byte (its sum is what the bytes add up to) in every
    /// copy, and the measurement is a finite, positive rate.
    @Test func readProbeReadsEverything() {
        let bytes = 1 << 16
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { buffer.deallocate() }
        for i in 0..<(bytes / 8) { buffer.storeBytes(of: UInt64(i), toByteOffset: 8 * i, as: UInt64.self) }
        let expected = (0..<(bytes / 8)).reduce(0) { $0 &+ $1 }
        for level in Self.levels {
            #expect(msgen_read_sum(Int32(level.rawValue), buffer, bytes) == expected, "\(level)")
        }
        let rate = Kernels.measureReadBandwidth(bytes: 1 << 20, threads: 1, passes: 1)
        #expect(rate.isFinite && rate > 0)
    }

    /// The detected level is what the kernel reports in /proc/cpuinfo (on Linux).
    @Test func cpuLevelMatchesProcCpuinfo() {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return }
        let flags = Set(line.split(separator: " ").map(String.init))
        let avx2 = flags.isSuperset(of: ["avx2", "fma", "f16c"])
        let avx512 = avx2 && flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq"])
        let expected: Kernels.Level = avx512 && flags.contains("avx512_vnni") ? .avx512vnni : avx512 ? .avx512 : avx2 ? .avx2 : .baseline
        #expect(Kernels.Level.cpu == expected)
    }

    @Test func levelIsClampedToTheCPUs() {
        Kernels.level = .avx512vnni
        #expect(Kernels.level == .cpu)
        Kernels.level = .baseline
        #expect(Kernels.level == .baseline && !Kernels.avx2)
        Kernels.avx2 = true
        #expect(Kernels.level == .cpu)
    }
}

/// SplitMix64: a fixed, seeded sequence, so a failure reproduces.
struct Random {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [−1, 1).
    mutating func float() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}
