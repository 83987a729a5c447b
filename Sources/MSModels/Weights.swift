import MSFormat
import MSKernels

/// A float32 array with a stable address, for weights and activations. Models pass raw
/// pointers to the kernels; this class owns the memory those pointers point into.
public final class Floats: @unchecked Sendable {
    public let p: UnsafeMutablePointer<Float>
    public let count: Int
    /// The tensor whose memory this is, when a float32 weight is used as loaded.
    private let owner: TensorStorage?

    /// `zeroed: false` leaves large buffers untouched, so pages that are never written
    /// (the unused tail of a KV cache) never become resident.
    ///
    /// On a cache-line boundary (64 bytes), as the weights are: malloc's 16-byte alignment
    /// makes every AVX-512 load of a row split across two lines, which on Intel cores
    /// halved the batched products (a 64-row f32 product 57 → 101 GFLOP/s on one Sapphire
    /// Rapids core, x aligned or not, same kernel).
    ///
    /// From 4 MiB (a long KV cache, which attention reads whole every token) on 2 MiB
    /// pages, for the reason given at TensorMemory; pages are still made resident only
    /// as they are written, 2 MiB at a time.
    public init(count: Int, zeroed: Bool = true) {
        self.count = count
        let bytes = max(count, 1) * 4
        let raw =
            bytes >= 4 << 20
            ? TensorMemory.allocateOnHugePages(bytes) : UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: TensorStorage.alignment)
        p = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        if zeroed { p.initialize(repeating: 0, count: max(count, 1)) }
        owner = nil
    }

    /// A float32 tensor's own memory, without a copy.
    init(_ t: Tensor) {
        precondition(t.dtype == .f32)
        count = t.count
        p = t.storage.bytes.baseAddress!.assumingMemoryBound(to: Float.self)
        owner = t.storage
    }

    deinit { if owner == nil { UnsafeMutableRawPointer(p).deallocate() } }

    /// Row `i` of a matrix with `width` columns.
    @inline(__always) public func row(_ i: Int, _ width: Int) -> UnsafeMutablePointer<Float> { p + i * width }
    public var array: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
    public func zero() { p.update(repeating: 0, count: count) }
}

/// A PyTorch Linear layer as a value: y = x·Wᵀ + b with W stored [out, in], in the dtype
/// the file stores it in (f32, f16, bf16 or q8: the kernels read each directly). Every
/// matrix product of the models goes through `apply`; the kernels behind it live in
/// MSKernels. A fused projection (Q, K and V stacked) is one Linear whose row ranges are
/// Linears too.
public struct Linear: @unchecked Sendable {
    public let weight: WeightMatrix
    let bias: Floats?
    /// The first row of `bias` this layer uses (a row range of a fused layer).
    let biasOffset: Int
    /// What keeps the weight's bytes alive: the loaded tensor, or a buffer made at load.
    let owner: AnyObject

    init(weight: WeightMatrix, bias: Floats?, owner: AnyObject, biasOffset: Int = 0) {
        self.weight = weight; self.bias = bias; self.owner = owner; self.biasOffset = biasOffset
    }

    /// A float32 weight [out, in] in `w`'s memory.
    init(_ w: Floats, bias: Floats?, in i: Int, out o: Int) {
        self.init(weight: WeightMatrix(type: .f32, data: w.p, rows: o, cols: i), bias: bias, owner: w)
    }

    public var inFeatures: Int { weight.cols }
    public var outFeatures: Int { weight.rows }
    public var dtype: WeightType { weight.type }
    /// Bytes the weight and bias take in memory.
    public var byteCount: Int { weight.byteCount + (bias == nil ? 0 : 4 * outFeatures) }

    /// y[rows, out] = x[rows, in]·Wᵀ + b, or y += that with `accumulate`. Rows of x and y
    /// may be strided.
    public func apply(
        _ x: UnsafePointer<Float>, rows: Int, xStride: Int? = nil, into y: UnsafeMutablePointer<Float>,
        yStride: Int? = nil, accumulate: Bool = false
    ) {
        guard rows > 0 else { return }
        Kernels.linear(
            x, rows: rows, xStride: xStride, weight: weight, bias: bias.map { UnsafePointer($0.p + biasOffset) },
            into: y, yStride: yStride, accumulate: accumulate)
    }

    /// Output rows `r` only: one of the projections of a fused layer.
    public func rows(_ r: Range<Int>) -> Linear {
        Linear(weight: weight.rows(r), bias: bias, owner: owner, biasOffset: biasOffset + r.lowerBound)
    }

    /// The same weight without the bias: x·Wᵀ alone.
    public var withoutBias: Linear { Linear(weight: weight, bias: nil, owner: owner) }

    /// x·Wᵀ (+ b) of `rows` rows into a new buffer.
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int) -> Floats {
        let y = Floats(count: rows * outFeatures, zeroed: false)
        apply(x, rows: rows, into: y.p)
        return y
    }
}

/// What a loaded model's weights take in memory, and what decoding reads per token.
public struct WeightSummary: Sendable, Equatable {
    /// Matrices (kept in their stored dtype), by dtype.
    public var matrixBytes: [WeightType: Int] = [:]
    /// Vectors and small tables (norms, biases, positions), widened to f32.
    public var vectorBytes = 0
    /// Bytes of the Linear weights one decoded token reads (every matrix product once).
    public var bytesPerToken = 0

    public init() {}
    public var residentBytes: Int { matrixBytes.values.reduce(vectorBytes, +) }
    /// "q8", or "f16 + f32" when matrices are stored in several dtypes.
    public var dtype: String {
        matrixBytes.filter { $0.value > 0 }.keys.map(\.rawValue).sorted().joined(separator: " + ")
    }
}

/// A model's tensors, read by name as its initializer asks for them. The checkpoint is
/// then checked against what was asked: every tensor asked for was there with the shape
/// asked for, and nothing was left over. So each tensor name is spelled once, in the code
/// that reads it, and the same code validates a checkpoint at convert time.
///
/// A missing or mis-shaped tensor is recorded, and zeros of the expected shape stand in
/// for it so that the initializer can go on and every problem is reported at once. Those
/// zeros are sized by the config, not the file: past `placeholderLimit` elements (a
/// config describing a model far larger than its checkpoint, or sizes that overflow) the
/// read stops at once with the problems found so far, instead of allocating terabytes.
public final class Weights {
    let tensors: [String: Tensor]
    let architecture: String
    /// The larger of 2^26 elements (256 MiB of float32) and the checkpoint's own size.
    let placeholderLimit: Int
    static let maxProblems = 1_000
    private var placeholderElements = 0
    /// Names in the order they were asked for: the model's natural order (embeddings,
    /// then layer by layer), which `convert` stores them in.
    public private(set) var names: [String] = []
    private var problems: [String] = []
    /// What the loaded model holds, for `bench` and `inspect`.
    public private(set) var summary = WeightSummary()

    public init(_ tensors: [String: Tensor], architecture: String) {
        self.tensors = tensors
        self.architecture = architecture
        placeholderLimit = max(1 << 26, tensors.values.reduce(0) { $0 + $1.count })
    }

    /// A tensor of exactly this shape, as float32.
    public func tensor(_ name: String, _ shape: [Int]) throws -> Floats {
        names.append(name)
        guard let t = tensors[name] else {
            problems.append("missing \(name) \(shapeString(shape))")
            return try placeholder(shape)
        }
        var ok = true
        if t.shape != shape { problems.append("\(name) has shape \(shapeString(t.shape)), config needs \(shapeString(shape))"); ok = false }
        if !t.dtype.isFloat { problems.append("\(name) has dtype \(t.dtype), weights must be f32, f16, bf16 or q8"); ok = false }
        guard ok else { return try placeholder(shape) }
        summary.vectorBytes += 4 * t.count
        if t.dtype == .f32 { return Floats(t) }
        let f = Floats(count: t.count, zeroed: false)
        t.decode(into: f.p)
        return f
    }

    /// Zeros standing in for a tensor the checkpoint lacks, within `placeholderLimit`
    /// elements and `maxProblems` tensors (a config of 10⁷ layers would take minutes).
    private func placeholder(_ shape: [Int]) throws -> Floats {
        let n = elementCount(shape)
        let (total, overflow) = placeholderElements.addingReportingOverflow(n ?? .max)
        guard n != nil, !overflow, total <= placeholderLimit, problems.count <= Self.maxProblems else {
            throw MSGenError(
                "weights do not match the \(architecture) config: \(problems.prefix(6).joined(separator: "; ")); "
                    + "the config describes far more than the checkpoint holds (a wrong config.json?)")
        }
        placeholderElements = total
        return Floats(count: n!)
    }

    /// A matrix [rows, cols] in the dtype it is stored in, without a copy.
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> (matrix: WeightMatrix, owner: AnyObject) {
        if let t = tensors[name], let type = WeightType(rawValue: t.dtype.rawValue), t.shape == [rows, cols] {
            names.append(name)
            summary.matrixBytes[type, default: 0] += t.byteCount
            return (WeightMatrix(type: type, data: t.storage.bytes.baseAddress!, rows: rows, cols: cols), t.storage)
        }
        let f = try tensor(name, [rows, cols])  // records what is wrong
        return (WeightMatrix(type: .f32, data: f.p, rows: rows, cols: cols), f)
    }

    /// `prefix.weight` [out, in] and, with `bias`, `prefix.bias` [out].
    public func linear(_ prefix: String, out: Int, in: Int, bias: Bool = true) throws -> Linear {
        let w = try matrix(prefix + ".weight", rows: out, cols: `in`)
        summary.bytesPerToken += w.matrix.byteCount
        return Linear(weight: w.matrix, bias: bias ? try tensor(prefix + ".bias", [out]) : nil, owner: w.owner)
    }

    /// Counts a Linear made from a matrix read otherwise (a tied output projection) as
    /// one that every decoded token reads.
    func readsEveryToken(_ l: Linear) { summary.bytesPerToken += l.weight.byteCount }

    /// Several Linears of the same input stacked into one (Q, K, V → one [3D, D] product):
    /// their rows side by side in their stored dtype (widened to f32 if they differ).
    public func fused(_ prefixes: [String], out: Int, in: Int) throws -> Linear {
        let parts = try prefixes.map { try linear($0, out: out, in: `in`) }
        let b = Floats(count: parts.count * out, zeroed: false)
        for (i, part) in parts.enumerated() { b.row(i, out).update(from: part.bias!.p, count: out) }
        let type = parts.allSatisfy({ $0.dtype == parts[0].dtype }) ? parts[0].dtype : .f32
        let rowBytes = type.rowBytes(cols: `in`)
        let storage = TensorStorage(byteCount: parts.count * out * rowBytes)
        for (i, part) in parts.enumerated() {
            let dst = storage.bytes.baseAddress! + i * out * rowBytes
            if part.dtype == type {
                dst.copyMemory(from: part.weight.data, byteCount: out * rowBytes)
            } else {
                Kernels.widen(part.weight, into: dst.assumingMemoryBound(to: Float.self))
            }
        }
        let w = WeightMatrix(type: type, data: storage.bytes.baseAddress!, rows: parts.count * out, cols: `in`)
        // The parts are released; the stacked copy is what stays (and is read).
        for part in parts {
            summary.matrixBytes[part.dtype, default: 0] -= part.weight.byteCount
            summary.bytesPerToken -= part.weight.byteCount
        }
        summary.matrixBytes[type, default: 0] += w.byteCount
        summary.bytesPerToken += w.byteCount
        summary.vectorBytes += 4 * b.count - parts.reduce(0) { $0 + 4 * $1.outFeatures }
        return Linear(weight: w, bias: b, owner: storage)
    }

    /// LayerNorm `prefix.weight` and `prefix.bias`, both [dim].
    public func norm(_ prefix: String, _ dim: Int) throws -> (weight: Floats, bias: Floats) {
        (try tensor(prefix + ".weight", [dim]), try tensor(prefix + ".bias", [dim]))
    }

    /// Throws one error naming every problem: tensors missing, mis-shaped, of a dtype that
    /// is not a weight type, or left over (in the checkpoint but read by nobody).
    public func finish() throws {
        let asked = Set(names)
        let unexpected = tensors.keys.filter { !asked.contains($0) }.sorted().map { "unexpected \($0)" }
        let all = problems + unexpected
        guard !all.isEmpty else { return }
        let shown = all.prefix(6).joined(separator: "; ")
        let more = all.count > 6 ? "; and \(all.count - 6) more" : ""
        throw MSGenError("weights do not match the \(architecture) config: \(shown)\(more)")
    }
}
