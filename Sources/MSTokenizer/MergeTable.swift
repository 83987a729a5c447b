/// The merge rules keyed by the ids of the pair they join: an open-addressing hash table
/// of 64-bit keys. Encoding does several lookups per character, and this is a few times
/// cheaper than `Dictionary` with its seeded SipHash.
struct MergeTable: Sendable {
    struct Merge {
        var rank: UInt32
        var id: Int32
    }

    private static let empty = UInt64.max
    private var keys: [UInt64]
    private var values: [Merge]
    private let shift: UInt64

    init(capacity: Int) {
        var bits = 4
        while (1 << bits) < capacity * 2 { bits += 1 }
        keys = [UInt64](repeating: Self.empty, count: 1 << bits)
        values = [Merge](repeating: Merge(rank: 0, id: 0), count: 1 << bits)
        shift = UInt64(64 - bits)
    }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always)
    private func slot(_ key: UInt64) -> Int {
        // Fibonacci hashing: the high bits of key × 2^64/φ spread neighbouring ids apart.
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// Inserts or replaces the rule for a pair; a later duplicate wins, as in the
    /// reference's HashMap built from the merges list in order.
    mutating func insert(_ left: Int32, _ right: Int32, _ merge: Merge) {
        let k = Self.key(left, right)
        var i = slot(k)
        while keys[i] != Self.empty && keys[i] != k { i = (i + 1) & (keys.count - 1) }
        keys[i] = k
        values[i] = merge
    }

    @inline(__always)
    func lookup(_ left: Int32, _ right: Int32) -> Merge? {
        let k = Self.key(left, right)
        var i = slot(k)
        return keys.withUnsafeBufferPointer { keys in
            while true {
                let found = keys[i]
                if found == k { return values[i] }
                if found == Self.empty { return nil }
                i = (i + 1) & (keys.count - 1)
            }
        }
    }
}
