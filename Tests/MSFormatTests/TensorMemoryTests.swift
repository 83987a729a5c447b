import Foundation
import Testing

@testable import MSFormat

/// Tensor bytes packed into shared 2 MiB-page regions: aligned, apart, and a freed
/// neighbour (whose pages go back to the kernel) leaves the others' bytes as they were.
struct TensorMemoryTests {
    static func filled(_ n: Int, _ value: UInt8) -> TensorStorage {
        let s = TensorStorage(byteCount: n)
        s.bytes.initializeMemory(as: UInt8.self, repeating: value)
        return s
    }

    @Test func packedTensorsStayIntactWhenANeighbourIsFreed() {
        // Sizes around the page (4 KiB) and packing thresholds, not multiples of 64.
        let sizes = [100, 65_537, 300_001, 4_096 * 3 + 7, 1 << 20, 70_000, 9 << 20]
        var storages = sizes.enumerated().map { Self.filled($1, UInt8($0 + 1)) }
        for s in storages { #expect(Int(bitPattern: s.bytes.baseAddress!) % TensorStorage.alignment == 0) }
        // Packed tensors do not overlap (spans as numbers: holding the storages would keep them alive).
        let spans = storages.map { (Int(bitPattern: $0.bytes.baseAddress!), $0.bytes.count) }
            .filter { $0.1 >= TensorMemory.regionMinimum && $0.1 < TensorMemory.ownMinimum }.sorted { $0.0 < $1.0 }
        #expect(spans.count == 4)
        for (a, b) in zip(spans, spans.dropFirst()) { #expect(a.0 + a.1 <= b.0) }
        // Free every other one (their whole pages are dropped), then check the rest byte by byte.
        var kept: [(Int, TensorStorage)] = []
        for (i, s) in storages.enumerated() where i % 2 == 0 { kept.append((i, s)) }
        storages = []
        for (i, s) in kept { #expect(s.bytes.allSatisfy { $0 == UInt8(i + 1) }, "tensor \(i) changed when its neighbours were freed") }
        // New tensors after the frees get fresh bytes (never a freed neighbour's range).
        let later = Self.filled(200_000, 0xAB)
        for (i, s) in kept { #expect(s.bytes.allSatisfy { $0 == UInt8(i + 1) }, "tensor \(i) changed by a later tensor") }
        #expect(later.bytes.allSatisfy { $0 == 0xAB })
    }
}
