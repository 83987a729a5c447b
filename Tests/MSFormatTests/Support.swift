import Foundation
import MSGenTestSupport

@testable import MSFormat

/// Paths and helpers shared by the tests.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static func path(_ p: String) -> String { root.appendingPathComponent(p).path }
}

/// A fresh temporary directory, removed when the value goes away.
final class TempDir {
    let url: URL
    init() {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-test-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Runs the msgen binary built beside the tests.
typealias CLI = MSGenCLI

/// Deterministic pseudo-random floats (xorshift), so tests need no global RNG state.
struct XorShift {
    var state: UInt64
    mutating func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
    /// Roughly normal: the sum of four uniforms, centred and scaled.
    mutating func normal() -> Float {
        var s: Float = 0
        for _ in 0..<4 { s += Float(next() >> 40) / Float(1 << 24) }
        return (s - 2) * 1.7
    }
}

/// Writes tensors as a safetensors file (header JSON, then the bytes in order), so that a
/// test can damage one tensor of a real checkpoint and write it back.
func writeSafetensors(_ tensors: [(name: String, tensor: Tensor)], to path: String) throws {
    let names: [DType: String] = [.f32: "F32", .f16: "F16", .bf16: "BF16", .i32: "I32", .i64: "I64"]
    var header: [String: Any] = [:]
    var body = Data()
    for (name, t) in tensors {
        header[name] = ["dtype": names[t.dtype]!, "shape": t.shape, "data_offsets": [body.count, body.count + t.byteCount]]
        body.append(contentsOf: UnsafeRawBufferPointer(t.storage.bytes))
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
    var out = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
    try (out + json + body).write(to: URL(fileURLWithPath: path))
}

/// A copy of a fixture directory in `dir`, to damage or extend.
func copyFixture(_ name: String, into dir: TempDir) throws -> String {
    let dst = dir.path("\((name as NSString).lastPathComponent)-\(UUID().uuidString)")
    try FileManager.default.copyItem(atPath: Fixtures.path(name), toPath: dst)
    return dst
}

/// `tensors` with the one named `name` replaced.
func replacing(_ name: String, in tensors: [(name: String, tensor: Tensor)], with t: Tensor) -> [(name: String, tensor: Tensor)] {
    tensors.map { $0.name == name ? (name, t) : $0 }
}
