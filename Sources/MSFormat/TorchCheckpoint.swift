import Foundation
import ZIPFoundation

/// Reader for PyTorch's zip checkpoints (`torch.save`, the default since PyTorch 1.6):
/// `<name>/data.pkl` (the pickled object) and `<name>/data/<key>` (raw storages).
/// The pickle goes through `Unpickler`, so loading never executes code.
public enum TorchCheckpoint {
    public static func read(path: String) throws -> [(name: String, tensor: Tensor)] {
        let file = (path as NSString).lastPathComponent
        let archive: Archive
        if try isLegacy(path) { throw legacyError(file) }
        try ZipDirectory.check(try MappedFile(path: path), name: file)
        do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read) } catch {
            throw MSGenError("\(file) is not a PyTorch zip checkpoint (damaged file? re-save it with torch.save)")
        }
        let archiveBytes = UInt64((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        func extract(_ entry: Entry) throws -> [UInt8] { try TorchCheckpoint.extract(archive, entry, file, archiveBytes: archiveBytes) }
        var entries: [String: Entry] = [:]
        for e in archive { entries[e.path] = e }
        guard let pkl = entries.keys.filter({ $0.hasSuffix("data.pkl") }).min(by: { $0.count < $1.count }) else {
            throw MSGenError("\(file) is a zip file but not a PyTorch checkpoint (no data.pkl)")
        }
        let prefix = String(pkl.dropLast("data.pkl".count))
        if let bo = entries[prefix + "byteorder"], try String(decoding: extract(bo), as: UTF8.self) != "little" {
            throw MSGenError("\(file) was saved on a big-endian machine; msgen reads little-endian checkpoints")
        }
        let pickle = entries[pkl]!
        try check(
            pickle.uncompressedSize <= maxPickleBytes,
            "\(file): its data.pkl declares \(pickle.uncompressedSize) bytes; a state dict's pickle is far smaller")
        var unpickler = Unpickler(try extract(pickle), what: file)
        // The pickle's dicts and lists are emptied once the tensors are read off them
        // (or the read fails): see `Unpickler.release`.
        defer { unpickler.release() }
        let root = try unpickler.load()

        var storages: [String: [UInt8]] = [:]
        var out: [(String, Tensor)] = []
        for (name, ref) in try stateDict(root, file: file) {
            if storages[ref.storage.key] == nil {
                guard let e = entries[prefix + "data/" + ref.storage.key] else {
                    throw MSGenError("\(file) is damaged: storage \(ref.storage.key) of \(name) is missing")
                }
                // Checked before extracting, so that a storage claiming 2^61 elements is an
                // error, not an allocation of that size.
                let expected = try storageBytes(ref.storage, name: name, file: file)
                try check(
                    e.uncompressedSize == UInt64(expected),
                    "\(file) is damaged: storage of \(name) has \(e.uncompressedSize) bytes, expected \(expected)")
                storages[ref.storage.key] = try extract(e)
            }
            out.append((name, try materialize(ref, storages[ref.storage.key]!, name: name, file: file)))
        }
        return out
    }

    /// torch.save's own files start with the pickle protocol byte, not a zip signature.
    static func isLegacy(_ path: String) throws -> Bool { try readFile(path, prefix: 2) == Data([0x80, 0x02]) }

    static func legacyError(_ file: String) -> MSGenError {
        MSGenError(
            "\(file) is a legacy PyTorch file (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False), which msgen does not read; re-save it in Python: torch.save(torch.load(\"\(file)\"), \"model.pt\", _use_new_zipfile_serialization=True)"
        )
    }

    /// No state dict's pickle comes near this (the tensors' bytes are stored beside it).
    static let maxPickleBytes: UInt64 = 1 << 30
    /// How many entries the walk over a state dict may visit, counting a shared sub-dict
    /// once for every place it appears (40 levels of {"x": d, "y": d} are 2^40 entries).
    static let maxEntries = 1_000_000
    /// How deeply dicts may nest inside a checkpoint.
    static let maxNesting = 100

    /// A storage's size in bytes, or a clear error if it overflows.
    private static func storageBytes(_ s: Unpickler.StorageRef, name: String, file: String) throws -> Int {
        let (bytes, overflow) = s.count.multipliedReportingOverflow(by: s.dtype.elementSize)
        try check(!overflow, "\(file) is damaged: the storage of \(name) declares \(s.count) elements, more than any file can hold")
        return bytes
    }

    private static func extract(_ archive: Archive, _ entry: Entry, _ file: String, archiveBytes: UInt64) throws -> [UInt8] {
        // An entry's bytes lie inside the archive, and deflate cannot expand data more than
        // ~1032 times: a larger claim is a zip bomb or a damaged header, and must not
        // become a huge allocation.
        let limit = entry.compressedSize.multipliedReportingOverflow(by: 1100)
        guard entry.compressedSize <= archiveBytes, entry.uncompressedSize < 1 << 40, !limit.overflow,
            entry.uncompressedSize <= limit.partialValue + 4096
        else {
            throw MSGenError("\(file) is damaged: entry \(entry.path) claims an impossible size")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(entry.uncompressedSize))
        let crc: CRC32
        do {
            crc = try archive.extract(entry, skipCRC32: false) { bytes += $0 }
        } catch {
            throw MSGenError("\(file) is damaged: cannot read \(entry.path) (\(error))")
        }
        // ZIPFoundation computes the CRC but leaves the comparison to the caller.
        try check(
            crc == entry.checksum && bytes.count == entry.uncompressedSize,
            "\(file) is damaged: \(entry.path) fails its CRC check")
        return bytes
    }

    /// The name → tensor map inside a pickled object: a state dict itself, or a training
    /// checkpoint holding one under "state_dict", "model_state_dict" or "model". Nested
    /// dicts flatten with dots; non-tensor values (step counts, _metadata) are skipped.
    private static func stateDict(_ root: Unpickler.PickleValue, file: String) throws -> [(String, Unpickler.TensorRef)] {
        guard case .dict(let top) = root else { throw MSGenError("\(file) does not hold a dict of tensors") }
        var dict = top
        for key in ["state_dict", "model_state_dict", "model"] {
            if let v = top.items.first(where: { if case .string(key) = $0.key { true } else { false } })?.value,
                case .dict(let d) = v
            {
                dict = d; break
            }
        }
        var out: [(String, Unpickler.TensorRef)] = []
        var seen = Set<String>()
        var visited = 0
        // Dicts are shared references in a pickle: one can contain itself, or appear under
        // many keys. The walk refuses cycles and bounds its depth and total output.
        var path: [ObjectIdentifier] = []
        func walk(_ d: Unpickler.Dict, _ prefix: String) throws {
            try check(
                !path.contains(ObjectIdentifier(d)),
                "\(file): the dict under '\(prefix.dropLast())' contains itself; msgen reads plain state dicts (save model.state_dict())")
            try check(path.count < maxNesting, "\(file): dicts nest deeper than \(maxNesting) levels; msgen reads plain state dicts")
            path.append(ObjectIdentifier(d))
            defer { path.removeLast() }
            for (k, v) in d.items {
                visited += 1
                try check(
                    visited <= maxEntries,
                    "\(file) holds more than \(maxEntries) entries (counting dicts shared under several keys once per key); it is not a model's state dict"
                )
                guard case .string(let name) = k else { continue }
                switch v {
                case .tensor(let t):
                    try check(seen.insert(prefix + name).inserted, "\(file) names the tensor \(prefix + name) twice")
                    out.append((prefix + name, t))
                case .dict(let inner): try walk(inner, prefix + name + ".")
                default: continue
                }
            }
        }
        try walk(dict, "")
        if out.isEmpty { throw MSGenError("\(file) holds no tensors") }
        // torch.compile wraps modules in `_orig_mod.`; DataParallel in `module.`.
        for wrapper in ["_orig_mod.", "module."] where out.allSatisfy({ $0.0.hasPrefix(wrapper) }) {
            out = out.map { (String($0.0.dropFirst(wrapper.count)), $0.1) }
        }
        return out
    }

    /// Copies a (possibly strided, offset) view of a storage into a contiguous tensor.
    private static func materialize(_ ref: Unpickler.TensorRef, _ storage: [UInt8], name: String, file: String) throws -> Tensor {
        let type = ref.storage.dtype
        let es = type.elementSize
        let storageCount = ref.storage.count
        // Again for every tensor: two tensors may name one storage key with different sizes.
        let expected = try storageBytes(ref.storage, name: name, file: file)
        try check(storage.count == expected, "\(file) is damaged: storage of \(name) has \(storage.count) bytes, expected \(expected)")
        try check(
            ref.shape.count <= FormatLimits.maxDimensions,
            "\(file): tensor \(name) has \(ref.shape.count) dimensions, more than the \(FormatLimits.maxDimensions) msgen reads")
        guard let count = elementCount(ref.shape), ref.stride.count == ref.shape.count, ref.offset >= 0 else {
            throw MSGenError("\(file): tensor \(name) has an impossible shape \(shapeString(ref.shape))")
        }
        // The furthest element the view touches must lie inside the storage; every step is
        // overflow-checked because offset, sizes and strides all come from the file.
        var last = ref.offset
        for (d, s) in zip(ref.shape, ref.stride) where d > 0 {
            try check(s >= 0, "\(file): tensor \(name) has a negative stride")
            let (span, o1) = (d - 1).multipliedReportingOverflow(by: s)
            let (sum, o2) = last.addingReportingOverflow(span)
            try check(
                !o1 && !o2, "\(file) is damaged: tensor \(name) reaches past its storage (offset \(ref.offset), strides \(shapeString(ref.stride)))")
            last = sum
        }
        try check(count == 0 || last < storageCount, "\(file) is damaged: tensor \(name) reaches past its storage")
        // A view repeating elements (stride 0, from expand()) could be far larger than the
        // file; state dicts hold tensors that own their elements.
        try check(
            count <= max(storageCount, 1),
            "\(file): tensor \(name) has \(count) elements but its storage only \(storageCount) (a broadcast view); save a contiguous copy")

        let dtype: DType =
            switch type {
            case .FloatStorage, .DoubleStorage: .f32  // float64 is narrowed: nothing runs in f64
            case .HalfStorage: .f16
            case .BFloat16Storage: .bf16
            case .IntStorage: .i32
            case .LongStorage: .i64
            }
        let outES = dtype.elementSize!
        let result = TensorStorage(byteCount: count * outES)
        var contiguous = [Int](repeating: 1, count: ref.shape.count)
        for d in stride(from: ref.shape.count - 2, through: 0, by: -1) { contiguous[d] = contiguous[d + 1] * ref.shape[d + 1] }
        if count == 0 { return Tensor(dtype: dtype, shape: ref.shape, storage: result) }
        storage.withUnsafeBytes { src in
            let dst = result.bytes.baseAddress!
            if type != .DoubleStorage && (ref.stride == contiguous || count <= 1) {  // the usual case: one copy
                dst.copyMemory(from: src.baseAddress! + ref.offset * es, byteCount: count * es)
                return
            }
            var index = [Int](repeating: 0, count: ref.shape.count)
            for i in 0..<count {
                var e = ref.offset
                for d in 0..<index.count { e += index[d] * ref.stride[d] }
                if type == .DoubleStorage {
                    dst.storeBytes(of: Float(src.loadUnaligned(fromByteOffset: e * 8, as: Double.self)), toByteOffset: i * 4, as: Float.self)
                } else {
                    (dst + i * outES).copyMemory(from: src.baseAddress! + e * es, byteCount: es)
                }
                var d = index.count - 1  // odometer over the shape, last dim fastest
                while d >= 0 { index[d] += 1; if index[d] < ref.shape[d] { break }; index[d] = 0; d -= 1 }
            }
        }
        return Tensor(dtype: dtype, shape: ref.shape, storage: result)
    }
}
