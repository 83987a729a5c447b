import Foundation

/// Reader for the safetensors format: an 8-byte little-endian header length, a JSON
/// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {…}}, then
/// the tensor bytes. Every size is checked against the file before it is used.
public enum Safetensors {
    /// The format's own bound on the JSON header (safetensors refuses larger ones too).
    static let maxHeaderBytes: UInt64 = 100_000_000
    static let dtypes: [String: DType] = ["F32": .f32, "F16": .f16, "BF16": .bf16, "I32": .i32, "I64": .i64]

    /// All tensors in file order.
    public static func read(path: String) throws -> [(name: String, tensor: Tensor)] {
        let file = try MappedFile(path: path)
        let name = (path as NSString).lastPathComponent
        guard let n = file.uint64LE(at: 0) else { throw MSGenError("\(name) is too short to be a safetensors file") }
        guard n <= UInt64(file.count - 8), n <= maxHeaderBytes else {
            throw MSGenError("\(name) is truncated or not a safetensors file: header length \(n) is larger than the file")
        }
        let headerData = Data(file.slice(8, Int(n))!)
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw MSGenError("\(name) has a corrupt safetensors header (not a JSON object)")
        }
        let dataStart = 8 + Int(n)
        let dataBytes = file.count - dataStart
        try check(
            header.count <= FormatLimits.maxTensors, "\(name) holds \(header.count) tensors, more than the \(FormatLimits.maxTensors) msgen reads")
        var entries: [(name: String, dtype: DType, shape: [Int], begin: Int, end: Int)] = []
        for (key, value) in header where key != "__metadata__" {
            guard let v = value as? [String: Any], let dt = v["dtype"] as? String,
                let shape = v["shape"] as? [Int], let offs = v["data_offsets"] as? [Int], offs.count == 2
            else {
                throw MSGenError("\(name): tensor \(key) has a malformed header entry")
            }
            guard let dtype = dtypes[dt] else {
                throw MSGenError("\(name): tensor \(key) has dtype \(dt); msgen reads F32, F16, BF16 (and I32/I64)")
            }
            try check(
                shape.count <= FormatLimits.maxDimensions,
                "\(name): tensor \(key) has \(shape.count) dimensions, more than the \(FormatLimits.maxDimensions) msgen reads")
            guard let count = elementCount(shape), let bytes = dtype.byteCount(elements: count) else {
                throw MSGenError("\(name): tensor \(key) has an impossible shape \(shapeString(shape))")
            }
            let (b, e) = (offs[0], offs[1])
            try check(b >= 0 && e >= b && e <= dataBytes, "\(name) is truncated or corrupt: tensor \(key) lies outside the file")
            try check(e - b == bytes, "\(name): tensor \(key) holds \(e - b) bytes but \(dt) \(shapeString(shape)) needs \(bytes)")
            entries.append((key, dtype, shape, b, e))
        }
        entries.sort { $0.begin < $1.begin }
        var end = 0
        for e in entries {
            try check(e.begin >= end || e.begin == e.end, "\(name): tensor \(e.name) overlaps another")
            end = max(end, e.end)
        }
        return entries.map { e in
            let storage = TensorStorage(byteCount: e.end - e.begin)
            storage.bytes.copyMemory(from: file.slice(dataStart + e.begin, e.end - e.begin)!)
            return (e.name, Tensor(dtype: e.dtype, shape: e.shape, storage: storage))
        }
    }
}
