/// A check of a zip file's directory before ZIPFoundation reads it.
///
/// ZIPFoundation (0.9.20) trusts the 64-bit offsets and sizes of a ZIP64 directory: it
/// converts them to `off_t` (a trap past 2^63) and adds them (a trap on overflow), so a
/// few bytes of hostile directory crash the process (found by the torch fuzzer). It also
/// looks for the end record through the whole file, one read per byte. This walks the
/// directory the way ZIPFoundation does and refuses, before it is opened, any archive
/// whose end record is not where the format puts it or whose 64-bit values could not be
/// offsets in a real file; what remains is for ZIPFoundation (and `extract`) to check.
enum ZipDirectory {
    /// Offsets and sizes no real checkpoint reaches (1 TiB); sums of a few stay far from
    /// overflowing.
    static let maxValue: UInt64 = 1 << 40

    static func check(_ file: MappedFile, name: String) throws {
        let bad = MSGenError("\(name) is not a PyTorch zip checkpoint (damaged file? re-save it with torch.save)")
        func u16(_ at: Int) -> Int? { file.slice(at, 2).map { Int($0.loadUnaligned(as: UInt16.self).littleEndian) } }
        func u32(_ at: Int) -> UInt32? { file.slice(at, 4).map { $0.loadUnaligned(as: UInt32.self).littleEndian } }
        func u64(_ at: Int) -> UInt64? { file.uint64LE(at: at) }

        // The end record (22 bytes and a comment of at most 65535): ZIPFoundation takes
        // the signature nearest the end.
        let eocdSignature: UInt32 = 0x0605_4B50
        guard
            let eocd = stride(from: file.count - 22, through: max(0, file.count - 22 - 65535), by: -1)
                .first(where: { u32($0) == eocdSignature })
        else { throw bad }
        guard var entries = u16(eocd + 10).map(UInt64.init), var directory = u32(eocd + 16).map(UInt64.init) else { throw bad }
        // A ZIP64 end record sits right before its 20-byte locator, right before the end record.
        let locator = eocd - 20, record = locator - 56
        if record >= 0, u32(locator) == 0x0706_4B50, u32(record) == 0x0606_4B50 {
            guard let n = u64(record + 32), let size = u64(record + 40), let offset = u64(record + 48),
                n < maxValue, size < maxValue, offset < maxValue
            else { throw bad }
            (entries, directory) = (n, offset)
        }
        // Every central directory entry: its ZIP64 extra field (id 1) holds 8-byte sizes
        // and the local header's offset, which ZIPFoundation seeks to and adds up.
        var at = Int(directory)
        for _ in 0..<min(entries, UInt64(file.count / 46)) {
            guard u32(at) == 0x0201_4B50, let nameLength = u16(at + 28), let extraLength = u16(at + 30),
                let commentLength = u16(at + 32)
            else { return }  // where ZIPFoundation stops too
            var field = at + 46 + nameLength
            let end = field + extraLength
            while field + 4 <= end, let id = u16(field), let size = u16(field + 2) {
                if id == 1 {
                    for value in stride(from: field + 4, to: min(field + 4 + size, end) - 7, by: 8) {
                        guard let v = u64(value), v < maxValue else { throw bad }
                    }
                }
                field += 4 + size
            }
            at = end + commentLength
        }
    }
}
