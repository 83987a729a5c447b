import CZstd

/// libzstd behind the two calls the format needs. Frames always carry the content size
/// and zstd's content checksum, so a decoder catches both truncation and flipped bits.
enum Zstd {
    static func compress(_ src: UnsafeRawBufferPointer, level: Int32) throws -> [UInt8] {
        guard let cctx = ZSTD_createCCtx() else { throw MSGenError("out of memory creating a zstd context") }
        defer { ZSTD_freeCCtx(cctx) }
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
        let bound = ZSTD_compressBound(src.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { dst in
            ZSTD_compress2(cctx, dst.baseAddress, bound, src.baseAddress, src.count)
        }
        if ZSTD_isError(n) != 0 { throw MSGenError("zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))") }
        out.removeSubrange(n...)
        return out
    }

    /// Decompresses one whole frame into `dst`, which must be exactly its content size.
    /// `what` names the frame in errors.
    static func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, what: String) throws {
        let declared = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        if declared == ZSTD_CONTENTSIZE_ERROR {
            throw MSGenError("\(what) is corrupt: not a zstd frame")
        }
        if declared == ZSTD_CONTENTSIZE_UNKNOWN || declared != UInt64(dst.count) {
            throw MSGenError("\(what) is corrupt: its frame declares \(declared) bytes, the header \(dst.count)")
        }
        // Exactly one frame must fill the stored range: trailing bytes mean damage too.
        let frameSize = ZSTD_findFrameCompressedSize(src.baseAddress, src.count)
        if ZSTD_isError(frameSize) != 0 || frameSize != src.count {
            throw MSGenError("\(what) is corrupt or truncated: the stored range is not exactly one zstd frame")
        }
        guard let dctx = ZSTD_createDCtx() else { throw MSGenError("out of memory creating a zstd context") }
        defer { ZSTD_freeDCtx(dctx) }
        let n = ZSTD_decompressDCtx(dctx, dst.baseAddress, dst.count, src.baseAddress, src.count)
        if ZSTD_isError(n) != 0 {
            if ZSTD_getErrorCode(n) == ZSTD_error_checksum_wrong {
                throw MSGenError("\(what) is corrupt: checksum mismatch")
            }
            throw MSGenError("\(what) is corrupt: \(String(cString: ZSTD_getErrorName(n)))")
        }
        if n != dst.count { throw MSGenError("\(what) is corrupt: decompressed to \(n) bytes, expected \(dst.count)") }
    }
}

/// Byte planes (Blosc's "shuffle"): within each block of `blockBytes` raw bytes, all first
/// bytes of the elements, then all second bytes, and so on. Weights' high bytes (sign and
/// exponent) are far more alike than their low bytes, so zstd finds much more to match.
/// Blocks are 1 MiB: large enough that each plane spans whole zstd blocks (128 KiB), which
/// each get their own entropy tables, and small enough to interleave back in place
/// through a cache-sized scratch.
enum BytePlanes {
    static let blockBytes = 1 << 20

    static func shuffle(_ src: UnsafeRawBufferPointer, elementSize s: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: src.count)
        out.withUnsafeMutableBytes { dst in
            forEachBlock(count: src.count, elementSize: s) { start, n in
                let a = src.baseAddress!.assumingMemoryBound(to: UInt8.self) + start
                let b = dst.baseAddress!.assumingMemoryBound(to: UInt8.self) + start
                for p in 0..<s { for i in 0..<n { b[p * n + i] = a[i * s + p] } }
            }
        }
        return out
    }

    /// Undoes `shuffle` in place, through one block of scratch.
    static func unshuffle(_ buf: UnsafeMutableRawBufferPointer, elementSize s: Int) {
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: blockBytes)
        defer { scratch.deallocate() }
        forEachBlock(count: buf.count, elementSize: s) { start, n in
            let b = buf.baseAddress!.assumingMemoryBound(to: UInt8.self) + start
            scratch.update(from: b, count: n * s)
            switch s {  // the common widths as whole-word loops, which the compiler vectorises
            case 2:
                var i = 0
                while i + 16 <= n {
                    let lo = SIMD16<UInt16>(truncatingIfNeeded: load(scratch + i))
                    let hi = SIMD16<UInt16>(truncatingIfNeeded: load(scratch + n + i))
                    UnsafeMutableRawPointer(b + 2 * i).storeBytes(of: lo | hi &<< 8, as: SIMD16<UInt16>.self)
                    i += 16
                }
                while i < n { b[2 * i] = scratch[i]; b[2 * i + 1] = scratch[n + i]; i += 1 }
            case 4:
                var i = 0
                while i + 16 <= n {
                    var v = SIMD16<UInt32>(truncatingIfNeeded: load(scratch + i))
                    for p in 1..<4 { v |= SIMD16<UInt32>(truncatingIfNeeded: load(scratch + p * n + i)) &<< UInt32(8 * p) }
                    UnsafeMutableRawPointer(b + 4 * i).storeBytes(of: v, as: SIMD16<UInt32>.self)
                    i += 16
                }
                while i < n { for p in 0..<4 { b[4 * i + p] = scratch[p * n + i] }; i += 1 }
            default: for p in 0..<s { for i in 0..<n { b[i * s + p] = scratch[p * n + i] } }
            }
        }
    }

    @inline(__always)
    private static func load(_ p: UnsafePointer<UInt8>) -> SIMD16<UInt8> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD16<UInt8>.self)
    }

    /// Calls `body(byteOffset, elementsInBlock)` for each block.
    private static func forEachBlock(count: Int, elementSize s: Int, _ body: (Int, Int) -> Void) {
        var start = 0
        while start < count {
            let bytes = min(blockBytes, count - start)
            body(start, bytes / s)
            start += bytes
        }
    }
}

extension Zstd {
    /// The content size a frame declares, or nil when it declares none or is not a frame.
    static func contentSize(_ src: UnsafeRawBufferPointer) -> Int? {
        let n = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        if n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN || n > UInt64(Int.max) { return nil }
        return Int(n)
    }
}
