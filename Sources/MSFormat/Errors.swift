/// The one error type msgen reports: a sentence for the user, printed as one line on stderr.
public struct MSGenError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Throws `MSGenError(message())` unless `condition` holds.
@inline(__always)
public func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw MSGenError(message()) }
}

/// Multiplies shape dimensions, failing (instead of trapping) on negative sizes or overflow.
public func elementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

public func shapeString(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

/// Bounds every reader applies to what a file declares, before anything is allocated from
/// it. No real checkpoint comes near them; a hostile or damaged file gets one clear error
/// instead of a huge allocation or a long loop. (Each reader's own limits sit beside it:
/// MSZ.maxHeaderBytes, Safetensors.maxHeaderBytes, TorchCheckpoint.maxPickleBytes and
/// maxEntries, Unpickler.maxMarkDepth/maxTupleDepth/maxValues, BPETokenizer.maxTokenId
/// and maxMerges, and JSON nesting: RawJSON 256 levels, Foundation's parser 512.)
public enum FormatLimits {
    /// Tensors in one file (the largest mixture-of-experts checkpoints hold ~10⁵).
    public static let maxTensors = 1_000_000
    /// Dimensions of one tensor (language models use 1 to 4).
    public static let maxDimensions = 16
    /// How many bytes a zstd frame can expand to per stored byte: a block holds at most
    /// 128 KiB and takes at least 4 bytes (3 of header, 1 of RLE content). A declared
    /// size beyond this is a lie, refused before the buffer is allocated.
    public static let maxZstdExpansion = 32_768
}
