import Foundation

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

    /// Lets the kernel drop the pages wholly inside [offset, offset+count) from this
    /// process's memory (they come back from the page cache if read again). Called once a
    /// tensor's frame is decompressed, so that loading a model does not hold the
    /// compressed file and the weights in memory at once.
    public func release(_ offset: Int, _ count: Int) {
        guard let base = bytes.baseAddress, offset >= 0, count > 0, offset + count <= bytes.count else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page, end = (offset + count) / page * page
        if end > start { madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED) }
    }

    public func uint64LE(at offset: Int) -> UInt64? {
        guard let s = slice(offset, 8) else { return nil }
        return UInt64(littleEndian: s.loadUnaligned(as: UInt64.self))
    }
}

/// Refuses an output path that writing would destroy or misuse, before any work is done:
/// one of `inputs` (the same file by device and inode, so also through a symlink or a
/// hard link), anything that exists and is not a regular file (a directory, a device such
/// as /dev/full, a symlink, a pipe), and a read-only file (as `rm` asks before removing
/// one, msgen does not silently replace it). A new file, or a writable regular file that
/// is not an input, is fine; it is then replaced atomically, keeping its permissions.
public func checkOutputPath(_ path: String, inputs: [String]) throws {
    var st = stat()
    guard lstat(path, &st) == 0 else {
        guard errno == ENOENT else { throw MSGenError("cannot write \(path): \(String(cString: strerror(errno)))") }
        let dir = (path as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        try check(
            FileManager.default.fileExists(atPath: dir.isEmpty ? "." : dir, isDirectory: &isDir) && isDir.boolValue,
            "cannot write \(path): the directory \(dir) does not exist")
        return
    }
    try checkReplaceable(path, st)
    for input in inputs {
        var s = stat()
        if stat(input, &s) == 0 && s.st_dev == st.st_dev && s.st_ino == st.st_ino {
            throw MSGenError("the output \(path) is the input \(input); writing it would destroy the checkpoint (choose another output name)")
        }
    }
    try check(
        st.st_mode & 0o222 != 0, "the output \(path) exists and is read-only; msgen does not replace it (remove it, or make it writable, first)")
}

/// Only a regular file may be replaced by a rename: renaming over a symlink, a device or a
/// directory would remove it rather than write to it.
private func checkReplaceable(_ path: String, _ st: stat) throws {
    let kind: String? =
        switch st.st_mode & S_IFMT {
        case S_IFREG: nil
        case S_IFLNK: "a symbolic link (give the path it points to, or remove the link)"
        case S_IFDIR: "a directory (give a file name inside it, such as \(path)/model.msz)"
        case S_IFCHR, S_IFBLK: "a device"
        case S_IFIFO: "a pipe"
        default: "not a regular file"
        }
    if let kind { throw MSGenError("the output \(path) is \(kind); msgen writes only a new file or over a regular one") }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so that a failure (or a kill) never leaves a half-written file under the final name.
/// An existing regular file keeps its permission bits; anything else at `path` is refused.
public func writeFileAtomically(path: String, _ write: (_ append: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
    var existing = stat()
    let exists = lstat(path, &existing) == 0
    if exists { try checkReplaceable(path, existing) }
    // O_EXCL | O_NOFOLLOW: never write through a file or link someone left at the name.
    var tmp = "", fd: Int32 = -1
    for _ in 0..<8 where fd < 0 {
        tmp = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644)
        if fd < 0 && errno != EEXIST { break }
    }
    if fd < 0 { throw MSGenError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
    var ok = false
    defer {
        if !ok { close(fd); unlink(tmp) }
    }
    if exists { _ = fchmod(fd, existing.st_mode & 0o7777) }
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
    // Checked again just before the rename: the path may have changed while we wrote.
    if lstat(path, &existing) == 0 {
        do { try checkReplaceable(path, existing) } catch { unlink(tmp); throw error }
    }
    if rename(tmp, path) != 0 {
        let e = String(cString: strerror(errno)); unlink(tmp)
        throw MSGenError("cannot rename \(tmp) to \(path): \(e)")
    }
}
