import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Where tensor bytes live. Decoding reads every weight once a token, and on 4 KiB pages
/// it pays a TLB miss and a restart of the hardware prefetcher (which stops at page
/// boundaries) every 4 KiB: with GPT-2-small's weights on 2 MiB pages a q8 token took
/// 0.85–0.93× the time (Zen 4, `msgen bench -t 1`, alternating runs). A mid-size model's
/// matrices are 0.5–4 MiB each, too small for pages of their own without wasting up to
/// 2 MiB apiece, so tensors from `regionMinimum` up to `ownMinimum` are packed one after
/// another into shared regions of `regionSize` on 2 MiB pages; larger ones get their own
/// allocation with its whole 2 MiB pages made huge; small ones come from malloc.
///
/// A packed tensor that is freed while its region lives on (the parts of a fused Q/K/V
/// copy) gives its whole 4 KiB pages back to the kernel at once (`MADV_DONTNEED`); a
/// region is freed when its last tensor is.
public enum TensorMemory {
    static let huge = 1 << 21
    static let regionSize = 32 << 20
    static let regionMinimum = 64 << 10
    static let ownMinimum = 8 << 20

    /// One shared region: bump-allocated, freed when nothing in it is live.
    final class Region: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        var used = 0, live = 0
        init() {
            base = UnsafeMutableRawPointer.allocate(byteCount: regionSize, alignment: huge)
            madvise(base, regionSize, MADV_HUGEPAGE)
        }
        deinit { base.deallocate() }
    }

    /// The region new tensors go into; the others live as long as their tensors do.
    private static let current = Mutex<Region?>(nil)

    /// n bytes of their own, their whole 2 MiB pages huge (the partial last one is not:
    /// it would take 2 MiB of memory for a few bytes). Freed by `deallocate()`.
    public static func allocateOnHugePages(_ n: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: huge)
        madvise(p, n & ~(huge - 1), MADV_HUGEPAGE)
        return p
    }

    /// 64-byte aligned bytes, and the region they were packed into (nil: their own).
    static func allocate(_ n: Int) -> (UnsafeMutableRawPointer, Region?) {
        let alignment = TensorStorage.alignment
        if n >= ownMinimum { return (allocateOnHugePages(n), nil) }
        guard n >= regionMinimum else { return (UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: alignment), nil) }
        return current.withLock { current in
            let size = (n + alignment - 1) & ~(alignment - 1)
            if current == nil || current!.used + size > regionSize { current = Region() }
            let r = current!
            defer { r.used += size; r.live += 1 }
            return (r.base + r.used, r)
        }
    }

    /// Frees what `allocate` gave.
    static func free(_ p: UnsafeMutableRawPointer, count n: Int, region: Region?) {
        guard let region else { p.deallocate(); return }
        let last = current.withLock { current in
            region.live -= 1
            guard region.live == 0 else { return false }
            if current === region { current = nil }
            return true
        }
        // The region itself goes with its last tensor (Region's deinit); a tensor in a
        // region that stays gives its whole pages back.
        if !last {
            let page = 4096, start = (Int(bitPattern: p) + page - 1) & ~(page - 1), end = (Int(bitPattern: p) + n) & ~(page - 1)
            if end > start { madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED) }
        }
    }
}
