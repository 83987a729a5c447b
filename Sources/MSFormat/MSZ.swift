import Dispatch
import Foundation

/// The `.msz` model file: see FORMAT.md beside this file.
public enum MSZ {
    public static let magic: [UInt8] = Array("MSZF".utf8)
    public static let version: UInt32 = 1
    static let preludeBytes = 16
    /// No real header comes near this; a corrupt size must not make us allocate gigabytes.
    static let maxHeaderBytes = 1 << 30
}

/// What the header says of one tensor.
public struct MSZTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Offset of the tensor's zstd frame from the start of the data section.
    public let offset: Int
    public let storedBytes: Int
    public let rawBytes: Int
    /// Whether the frame holds byte planes (see `BytePlanes`) rather than plain bytes.
    public let planes: Bool
}

/// The header as it is stored (JSON).
struct MSZHeader: Codable {
    struct Entry: Codable {
        var name: String
        var dtype: String
        var shape: [Int]
        var offset: Int
        var size: Int
        var layout: String
    }
    var architecture: String
    var config: JSONValue
    var tokenizer: String?
    var tensors: [Entry]
    var provenance: [String: JSONValue]
}

/// An opened model file: header parsed and every offset checked; tensors load on demand.
public final class MSZFile: @unchecked Sendable {
    public let path: String
    public let architecture: String
    public let config: JSONValue
    /// The embedded tokenizer.json, byte for byte as converted.
    public let tokenizerJSON: String?
    public let provenance: [String: JSONValue]
    public let tensors: [MSZTensorInfo]
    public let headerBytes: Int
    private let file: MappedFile
    private let dataStart: Int

    public var fileSize: Int { file.count }

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let name = (path as NSString).lastPathComponent
        guard let prelude = file.slice(0, MSZ.preludeBytes) else {
            throw MSGenError("\(name) is not an msgen model: \(file.count) bytes is too short (truncated?)")
        }
        guard Array(prelude[0..<4]) == MSZ.magic else {
            throw MSGenError("\(name) is not an msgen model file (bad magic; convert checkpoints with `msgen convert`)")
        }
        let version = UInt32(littleEndian: prelude.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        guard version <= MSZ.version, version >= 1 else {
            throw MSGenError("\(name) uses .msz format version \(version); this msgen reads version \(MSZ.version) (upgrade msgen)")
        }
        let headerSize = file.uint64LE(at: 8)!
        guard headerSize <= UInt64(file.count - MSZ.preludeBytes) else {
            throw MSGenError("\(name) is truncated or corrupt: header length \(headerSize) is larger than the file (\(file.count) bytes)")
        }
        headerBytes = Int(headerSize)
        dataStart = MSZ.preludeBytes + headerBytes
        let frame = file.slice(MSZ.preludeBytes, headerBytes)!
        let json = try MSZFile.decompressHeader(frame, name: name)
        let header: MSZHeader
        do { header = try JSONDecoder().decode(MSZHeader.self, from: json) } catch {
            throw MSGenError("\(name) has a corrupt header: \(describe(error))")
        }
        architecture = header.architecture
        config = header.config
        tokenizerJSON = header.tokenizer
        provenance = header.provenance
        tensors = try MSZFile.validate(header.tensors, dataBytes: file.count - dataStart, name: name)
    }

    private static func decompressHeader(_ frame: UnsafeRawBufferPointer, name: String) throws -> Data {
        let declared = Zstd.contentSize(frame)
        guard let size = declared, size <= MSZ.maxHeaderBytes, size / FormatLimits.maxZstdExpansion <= frame.count else {
            throw MSGenError("\(name) has a corrupt header (its size is unreadable or larger than its \(frame.count) stored bytes can hold)")
        }
        var data = Data(count: size)
        try data.withUnsafeMutableBytes { try Zstd.decompress(frame, into: $0, what: "the header of \(name)") }
        return data
    }

    /// Checks every entry before any of it is trusted: names unique, dtypes known, shapes
    /// that do not overflow, sizes that match the dtype, frames inside the data section
    /// and not overlapping, and no bytes left over at the end of the file.
    private static func validate(_ entries: [MSZHeader.Entry], dataBytes: Int, name: String) throws -> [MSZTensorInfo] {
        try check(
            entries.count <= FormatLimits.maxTensors,
            "\(name) has a corrupt header: \(entries.count) tensors, more than the \(FormatLimits.maxTensors) msgen reads")
        var seen = Set<String>()
        var infos: [MSZTensorInfo] = []
        for e in entries {
            try check(
                e.shape.count <= FormatLimits.maxDimensions,
                "\(name): tensor \(e.name) has \(e.shape.count) dimensions, more than the \(FormatLimits.maxDimensions) msgen reads")
            try check(!e.name.isEmpty, "\(name) has a corrupt header: a tensor without a name")
            try check(seen.insert(e.name).inserted, "\(name) has a corrupt header: tensor \(e.name) appears twice")
            guard let dtype = DType(rawValue: e.dtype) else {
                throw MSGenError("\(name): tensor \(e.name) has unknown dtype '\(e.dtype)'")
            }
            guard let n = elementCount(e.shape), let raw = dtype.byteCount(elements: n) else {
                throw MSGenError("\(name): tensor \(e.name) has an impossible shape \(shapeString(e.shape)) for \(dtype)")
            }
            try check(e.layout == "planes" || e.layout == "plain", "\(name): tensor \(e.name) has unknown layout '\(e.layout)'")
            try check(
                e.offset >= 0 && e.size > 0 && e.offset <= dataBytes && e.size <= dataBytes - e.offset,
                "\(name) is truncated or corrupt: tensor \(e.name) lies outside the file")
            // Checked here, not only at load: `inspect` must not report a tensor whose
            // frame cannot possibly hold it.
            try check(
                raw / FormatLimits.maxZstdExpansion <= e.size,
                "\(name) is corrupt: tensor \(e.name) needs \(raw) bytes, more than its \(e.size)-byte frame can hold")
            infos.append(
                MSZTensorInfo(
                    name: e.name, dtype: dtype, shape: e.shape, offset: e.offset,
                    storedBytes: e.size, rawBytes: raw, planes: e.layout == "planes"))
        }
        var end = 0
        for t in infos.sorted(by: { $0.offset < $1.offset }) {
            try check(t.offset >= end, "\(name) has a corrupt header: tensor \(t.name) overlaps another")
            end = t.offset + t.storedBytes
        }
        try check(end == dataBytes, "\(name) is corrupt: \(dataBytes - end) unexpected bytes after the last tensor")
        return infos
    }

    public func info(_ name: String) -> MSZTensorInfo? { tensors.first { $0.name == name } }

    /// Decompresses the named tensors (all by default) in parallel, each straight into its
    /// own aligned buffer, verifying every checksum. Tensors keep their stored dtype.
    public func load(_ names: [String]? = nil) throws -> [String: Tensor] {
        let wanted: [MSZTensorInfo] = try (names ?? tensors.map(\.name)).map { n in
            guard let i = info(n) else { throw MSGenError("\(path) has no tensor named \(n)") }
            return i
        }
        // Largest first, so the parallel loop ends evenly.
        let order = wanted.sorted { $0.rawBytes > $1.rawBytes }
        var results = [Tensor?](repeating: nil, count: order.count)
        var errors = [MSGenError?](repeating: nil, count: order.count)
        results.withUnsafeMutableBufferPointer { res in
            errors.withUnsafeMutableBufferPointer { errs in
                DispatchQueue.concurrentPerform(iterations: order.count) { i in
                    do { res[i] = try loadOne(order[i]) } catch {
                        errs[i] = error as? MSGenError ?? MSGenError("\(error)")
                    }
                }
            }
        }
        if let e = errors.compactMap({ $0 }).first { throw e }
        var out: [String: Tensor] = [:]
        for (i, t) in order.enumerated() { out[t.name] = results[i]! }
        return out
    }

    private func loadOne(_ t: MSZTensorInfo) throws -> Tensor {
        let frame = file.slice(dataStart + t.offset, t.storedBytes)!
        // The shape's size must be what the frame declares before it is allocated: a header
        // may claim terabytes for a frame of a few bytes.
        let declared = Zstd.contentSize(frame)
        try check(
            declared == t.rawBytes,
            "tensor \(t.name) in \((path as NSString).lastPathComponent) is corrupt: its frame declares \(declared.map(String.init) ?? "no") bytes, its shape needs \(t.rawBytes)"
        )
        let storage = TensorStorage(byteCount: t.rawBytes)
        try Zstd.decompress(frame, into: storage.bytes, what: "tensor \(t.name) in \((path as NSString).lastPathComponent)")
        file.release(dataStart + t.offset, t.storedBytes)
        if t.planes, let s = t.dtype.elementSize { BytePlanes.unshuffle(storage.bytes, elementSize: s) }
        return Tensor(dtype: t.dtype, shape: t.shape, storage: storage)
    }
}

/// Writes `.msz` files.
public enum MSZWriter {
    /// Compresses every tensor (in parallel) and writes the file atomically.
    /// `progress(done, total)` is called as tensors finish, from any thread.
    public static func write(
        path: String, architecture: String, config: JSONValue, tokenizer: String?,
        tensors: [(name: String, tensor: Tensor)], provenance: [String: JSONValue],
        level: Int32 = 3, progress: (@Sendable (Int, Int) -> Void)? = nil
    ) throws {
        var names = Set<String>()
        for t in tensors { try check(names.insert(t.name).inserted, "duplicate tensor name \(t.name)") }
        var frames = [[UInt8]](repeating: [], count: tensors.count)
        var errors = [MSGenError?](repeating: nil, count: tensors.count)
        let lock = NSLock()
        var done = 0
        frames.withUnsafeMutableBufferPointer { out in
            errors.withUnsafeMutableBufferPointer { errs in
                DispatchQueue.concurrentPerform(iterations: tensors.count) { i in
                    let t = tensors[i].tensor
                    let raw = UnsafeRawBufferPointer(t.storage.bytes)
                    do {
                        if let s = t.dtype.elementSize, s > 1 {
                            let planes = BytePlanes.shuffle(raw, elementSize: s)
                            out[i] = try planes.withUnsafeBytes { try Zstd.compress($0, level: level) }
                        } else {
                            out[i] = try Zstd.compress(raw, level: level)
                        }
                    } catch { errs[i] = error as? MSGenError ?? MSGenError("\(error)") }
                    lock.lock(); done += 1; let d = done; lock.unlock()
                    progress?(d, tensors.count)
                }
            }
        }
        if let e = errors.compactMap({ $0 }).first { throw e }

        var entries: [MSZHeader.Entry] = []
        var offset = 0
        for (i, t) in tensors.enumerated() {
            let planes = (t.tensor.dtype.elementSize ?? 1) > 1
            entries.append(
                .init(
                    name: t.name, dtype: t.tensor.dtype.rawValue, shape: t.tensor.shape,
                    offset: offset, size: frames[i].count, layout: planes ? "planes" : "plain"))
            offset += frames[i].count
        }
        let header = MSZHeader(
            architecture: architecture, config: config, tokenizer: tokenizer,
            tensors: entries, provenance: provenance)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = try encoder.encode(header)
        let headerFrame = try json.withUnsafeBytes { try Zstd.compress($0, level: 19) }

        var prelude = MSZ.magic
        withUnsafeBytes(of: MSZ.version.littleEndian) { prelude += $0 }
        withUnsafeBytes(of: UInt64(headerFrame.count).littleEndian) { prelude += $0 }
        try writeFileAtomically(path: path) { append in
            try prelude.withUnsafeBytes(append)
            try headerFrame.withUnsafeBytes(append)
            for f in frames { try f.withUnsafeBytes(append) }
        }
    }
}

/// A decoding error as a short phrase ("missing key 'tensors'").
func describe(_ error: Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, let ctx):
        return "missing key '\((ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."))'"
    case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
        return "wrong type at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
    case DecodingError.dataCorrupted(let ctx):
        return ctx.codingPath.isEmpty ? "not valid JSON" : "bad value at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
    default:
        return "\(error)"
    }
}
