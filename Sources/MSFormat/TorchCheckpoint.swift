import Foundation
import ZIPFoundation

/// Reader for PyTorch's zip checkpoints (`torch.save`, the default since PyTorch 1.6):
/// `<name>/data.pkl` (the pickled object) and `<name>/data/<key>` (raw storages).
/// The pickle goes through `Unpickler`, so loading never executes code.
public enum TorchCheckpoint {
    public static func read(path: String) throws -> [(name: String, tensor: Tensor)] {
        let file = (path as NSString).lastPathComponent
        let archive: Archive
        do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read) } catch {
            throw MSGenError("\(file) is not a PyTorch zip checkpoint (legacy or damaged file? re-save it with torch.save)")
        }
        var entries: [String: Entry] = [:]
        for e in archive { entries[e.path] = e }
        guard let pkl = entries.keys.filter({ $0.hasSuffix("data.pkl") }).min(by: { $0.count < $1.count }) else {
            throw MSGenError("\(file) is a zip file but not a PyTorch checkpoint (no data.pkl)")
        }
        let prefix = String(pkl.dropLast("data.pkl".count))
        if let bo = entries[prefix + "byteorder"], try String(decoding: extract(archive, bo, file), as: UTF8.self) != "little" {
            throw MSGenError("\(file) was saved on a big-endian machine; msgen reads little-endian checkpoints")
        }
        var unpickler = Unpickler(try extract(archive, entries[pkl]!, file), what: file)
        let root = try unpickler.load()

        var storages: [String: [UInt8]] = [:]
        var out: [(String, Tensor)] = []
        for (name, ref) in try stateDict(root, file: file) {
            if storages[ref.storage.key] == nil {
                guard let e = entries[prefix + "data/" + ref.storage.key] else {
                    throw MSGenError("\(file) is damaged: storage \(ref.storage.key) of \(name) is missing")
                }
                storages[ref.storage.key] = try extract(archive, e, file)
            }
            out.append((name, try materialize(ref, storages[ref.storage.key]!, name: name, file: file)))
        }
        return out
    }

    private static func extract(_ archive: Archive, _ entry: Entry, _ file: String) throws -> [UInt8] {
        guard entry.uncompressedSize < 1 << 40 else { throw MSGenError("\(file) is damaged: entry \(entry.path) is impossibly large") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(entry.uncompressedSize))
        let crc: CRC32
        do {
            crc = try archive.extract(entry, skipCRC32: false) { bytes += $0 }
        } catch {
            throw MSGenError("\(file) is damaged: cannot read \(entry.path) (\(error))")
        }
        // ZIPFoundation computes the CRC but leaves the comparison to the caller.
        try check(crc == entry.checksum && bytes.count == entry.uncompressedSize,
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
               case .dict(let d) = v { dict = d; break }
        }
        var out: [(String, Unpickler.TensorRef)] = []
        func walk(_ d: Unpickler.Dict, _ prefix: String) {
            for (k, v) in d.items {
                guard case .string(let name) = k else { continue }
                switch v {
                case .tensor(let t): out.append((prefix + name, t))
                case .dict(let inner): walk(inner, prefix + name + ".")
                default: continue
                }
            }
        }
        walk(dict, "")
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
        try check(storage.count == ref.storage.count * es, "\(file) is damaged: storage of \(name) has \(storage.count) bytes, expected \(ref.storage.count * es)")
        guard let count = elementCount(ref.shape), ref.stride.count == ref.shape.count, ref.offset >= 0 else {
            throw MSGenError("\(file): tensor \(name) has an impossible shape \(shapeString(ref.shape))")
        }
        // The furthest element the view touches must lie inside the storage.
        var last = ref.offset
        for (d, s) in zip(ref.shape, ref.stride) where d > 0 {
            try check(s >= 0, "\(file): tensor \(name) has a negative stride")
            let (span, o) = (d - 1).multipliedReportingOverflow(by: s)
            try check(!o, "\(file): tensor \(name) has an impossible stride")
            last += span
        }
        try check(count == 0 || last < ref.storage.count, "\(file) is damaged: tensor \(name) reaches past its storage")

        let dtype: DType = switch type {
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
