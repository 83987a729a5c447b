#if canImport(Glibc)
import Glibc
#endif

/// A whole file mapped read-only. Model files are read through the map so that zstd
/// decompresses straight from the page cache into the tensors' buffers.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw MSGenError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MSGenError("cannot read \(path): \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw MSGenError("\(path) is a directory, not a file") }
        let size = Int(st.st_size)
        if size == 0 { bytes = UnsafeRawBufferPointer(start: nil, count: 0); return }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw MSGenError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    deinit { if let p = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: p), bytes.count) } }

    public var count: Int { bytes.count }

    /// Bytes [offset, offset+count), or nil when that range is not inside the file.
    public func slice(_ offset: Int, _ count: Int) -> UnsafeRawBufferPointer? {
        guard offset >= 0, count >= 0, offset <= bytes.count, count <= bytes.count - offset else { return nil }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    public func uint64LE(at offset: Int) -> UInt64? {
        guard let s = slice(offset, 8) else { return nil }
        return UInt64(littleEndian: s.loadUnaligned(as: UInt64.self))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so that a failure (or a kill) never leaves a half-written file under the final name.
public func writeFileAtomically(path: String, _ write: (_ append: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
    let tmp = path + ".tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd < 0 { throw MSGenError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
    var ok = false
    defer {
        if !ok { close(fd); unlink(tmp) }
    }
    try write { chunk in
        var done = 0
        while done < chunk.count {
            let n = Glibc.write(fd, chunk.baseAddress! + done, chunk.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw MSGenError("cannot write \(tmp): \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
    guard fsync(fd) == 0 else { throw MSGenError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
    close(fd)
    ok = true
    if rename(tmp, path) != 0 {
        let e = String(cString: strerror(errno)); unlink(tmp)
        throw MSGenError("cannot rename \(tmp) to \(path): \(e)")
    }
}
