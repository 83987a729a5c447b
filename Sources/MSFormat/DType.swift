/// Element types of stored tensors.
///
/// `q8` is block quantisation like ggml's Q8_0: the flattened tensor in blocks of 32
/// values, each block stored as an IEEE half scale `d` followed by 32 signed bytes `q`,
/// value = d·q. Blocks never straddle rows because q8 is only used when the last
/// dimension is a multiple of 32.
public enum DType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8, i32, i64

    public static let q8Block = 32
    public static let q8BlockBytes = 2 + 32

    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 || self == .q8 }

    /// Bytes of one element; nil for block types.
    public var elementSize: Int? {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16: 2
        case .i64: 8
        case .q8: nil
        }
    }

    /// Bytes that `count` elements take, or nil if the count does not fit this type
    /// (overflow, or q8 with a partial block).
    public func byteCount(elements count: Int) -> Int? {
        if let s = elementSize {
            let (b, o) = count.multipliedReportingOverflow(by: s)
            return o ? nil : b
        }
        guard count % DType.q8Block == 0 else { return nil }
        return (count / DType.q8Block) * DType.q8BlockBytes
    }
}

// MARK: - Scalar conversions

/// Round-to-nearest-even float32 → bfloat16, keeping NaN a NaN.
@inline(__always)
public func bf16Bits(_ x: Float) -> UInt16 {
    let b = x.bitPattern
    if x.isNaN { return UInt16(b >> 16) | 0x40 }
    let rounding = 0x7FFF + ((b >> 16) & 1)
    return UInt16((b &+ rounding) >> 16)
}

@inline(__always)
public func floatFromBF16(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }
