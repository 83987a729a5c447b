#if canImport(Glibc)
    import Glibc
#endif

/// 64-byte aligned, immutable-after-fill bytes of one tensor. Weights are shared by every
/// sequence and thread, so the storage is a class that frees itself.
public final class TensorStorage: @unchecked Sendable {
    public static let alignment = 64
    public let bytes: UnsafeMutableRawBufferPointer

    private let region: TensorMemory.Region?

    public init(byteCount: Int) {
        let (p, region) = TensorMemory.allocate(byteCount)
        self.region = region
        bytes = UnsafeMutableRawBufferPointer(start: p, count: byteCount)
    }
    deinit { bytes.baseAddress.map { TensorMemory.free($0, count: bytes.count, region: region) } }
}

/// A named tensor's dtype, shape and bytes (row-major, contiguous).
public struct Tensor: Sendable {
    public let dtype: DType
    public let shape: [Int]
    public let storage: TensorStorage

    public var count: Int { elementCount(shape) ?? 0 }
    public var byteCount: Int { storage.bytes.count }

    public init(dtype: DType, shape: [Int], storage: TensorStorage) {
        self.dtype = dtype; self.shape = shape; self.storage = storage
    }

    /// A float32 tensor from values.
    public init(shape: [Int], floats: [Float]) {
        precondition(elementCount(shape) == floats.count)
        let s = TensorStorage(byteCount: floats.count * 4)
        floats.withUnsafeBytes { s.bytes.copyMemory(from: $0) }
        self.init(dtype: .f32, shape: shape, storage: s)
    }

    /// Values as float32 (dequantised for q8). Integers are converted exactly up to 2^24.
    public func floats() -> [Float] {
        let n = count
        return [Float](unsafeUninitializedCapacity: n) { out, done in
            decode(into: out.baseAddress!)
            done = n
        }
    }

    /// Decodes every element into `out` (which holds `count` floats).
    public func decode(into out: UnsafeMutablePointer<Float>) {
        let n = count
        let raw = UnsafeRawPointer(storage.bytes.baseAddress!)
        switch dtype {
        case .f32: out.update(from: raw.assumingMemoryBound(to: Float.self), count: n)
        case .f16:
            let p = raw.assumingMemoryBound(to: Float16.self)
            for i in 0..<n { out[i] = Float(p[i]) }
        case .bf16:
            let p = raw.assumingMemoryBound(to: UInt16.self)
            for i in 0..<n { out[i] = floatFromBF16(p[i]) }
        case .i32:
            let p = raw.assumingMemoryBound(to: Int32.self)
            for i in 0..<n { out[i] = Float(p[i]) }
        case .i64:
            for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
        case .q8:
            for b in 0..<(n / DType.q8Block) {
                let block = raw + b * DType.q8BlockBytes
                let d = Float(block.loadUnaligned(as: Float16.self))
                let q = (block + 2).assumingMemoryBound(to: Int8.self)
                for j in 0..<DType.q8Block { out[b * DType.q8Block + j] = d * Float(q[j]) }
            }
        }
    }

    /// Integer values (for i32/i64 tensors such as token ids in test fixtures).
    public func ints() -> [Int] {
        let raw = UnsafeRawPointer(storage.bytes.baseAddress!)
        switch dtype {
        case .i32: return (0..<count).map { Int(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        case .i64: return (0..<count).map { Int(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        default: return floats().map { Int($0) }
        }
    }

    /// This tensor in another float dtype. Converting to q8 needs the last dimension to be
    /// a multiple of 32 (callers check `canQuantize`).
    public func converted(to target: DType) -> Tensor {
        if target == dtype { return self }
        let values = floats()
        let n = values.count
        let out = TensorStorage(byteCount: target.byteCount(elements: n)!)
        let dst = out.bytes.baseAddress!
        switch target {
        case .f32: values.withUnsafeBytes { out.bytes.copyMemory(from: $0) }
        case .f16:
            let p = dst.assumingMemoryBound(to: Float16.self)
            for i in 0..<n { p[i] = Float16(values[i]) }
        case .bf16:
            let p = dst.assumingMemoryBound(to: UInt16.self)
            for i in 0..<n { p[i] = bf16Bits(values[i]) }
        case .q8: quantizeQ8(values, into: dst)
        case .i32, .i64: fatalError("integer conversion is not a float conversion")
        }
        return Tensor(dtype: target, shape: shape, storage: out)
    }

    /// How many elements are NaN or ±Inf, and the index of the first. Read from the bits,
    /// without converting (for q8, a non-finite block scale counts for its 32 values).
    public func nonFinite() -> (count: Int, first: Int)? {
        let raw = UnsafeRawPointer(storage.bytes.baseAddress!)
        var count = 0, first = -1
        func scan(_ n: Int, _ isBad: (Int) -> Bool) {
            for i in 0..<n where isBad(i) { count += 1; if first < 0 { first = i } }
        }
        switch dtype {
        case .f32: scan(self.count) { (raw.load(fromByteOffset: 4 * $0, as: UInt32.self) & 0x7F80_0000) == 0x7F80_0000 }
        case .f16: scan(self.count) { (raw.load(fromByteOffset: 2 * $0, as: UInt16.self) & 0x7C00) == 0x7C00 }
        case .bf16: scan(self.count) { (raw.load(fromByteOffset: 2 * $0, as: UInt16.self) & 0x7F80) == 0x7F80 }
        case .q8:
            scan(self.count / DType.q8Block) { (raw.loadUnaligned(fromByteOffset: $0 * DType.q8BlockBytes, as: UInt16.self) & 0x7C00) == 0x7C00 }
            count *= DType.q8Block; first *= DType.q8Block
        case .i32, .i64: return nil
        }
        return count == 0 ? nil : (count, first)
    }

    /// Whether q8 can hold this tensor: a matrix whose rows are whole blocks.
    public var canQuantize: Bool { shape.count >= 2 && (shape.last ?? 0) % DType.q8Block == 0 }
}

/// Q8_0-style quantisation. The scale is rounded to half precision *before* the values
/// are divided by it, so that the stored scale is the one the values were made with.
/// Error per value ≤ d/2 + the clamp at ±127, which together stay below 0.51·amax/127.
func quantizeQ8(_ values: [Float], into dst: UnsafeMutableRawPointer) {
    for b in 0..<(values.count / DType.q8Block) {
        var amax: Float = 0
        for j in 0..<DType.q8Block { amax = max(amax, abs(values[b * DType.q8Block + j])) }
        let d = Float16(amax / 127)
        let block = dst + b * DType.q8BlockBytes
        block.storeBytes(of: d, as: Float16.self)
        let q = (block + 2).assumingMemoryBound(to: Int8.self)
        let inv: Float = Float(d) == 0 ? 0 : 1 / Float(d)
        for j in 0..<DType.q8Block {
            q[j] = Int8(max(-127, min(127, (values[b * DType.q8Block + j] * inv).rounded())))
        }
    }
}
