import Foundation
import Testing

@testable import MSFormat

/// The checkpoint readers return exactly what PyTorch and safetensors wrote
/// (tools/make_format_fixtures.py recorded the values in expected.json).
struct ReaderTests {
    struct Expected: Decodable { let dtype: String; let shape: [Int]; let values: [Double] }
    static let expected = try! JSONDecoder().decode(
        [String: Expected].self,
        from: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("format/expected.json"))))

    func assertMatches(_ tensors: [(name: String, tensor: Tensor)], names: [String]) {
        let byName = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.tensor) })
        #expect(Set(byName.keys) == Set(names))
        for name in names {
            let e = Self.expected[name]!, t = byName[name]!
            #expect(t.dtype.rawValue == e.dtype, "\(name)")
            #expect(t.shape == e.shape, "\(name)")
            if t.dtype == .i64 {
                #expect(t.ints() == e.values.map { Int($0) }, "\(name)")
            } else {
                #expect(t.floats() == e.values.map { Float($0) }, "\(name)")
            }
        }
    }

    @Test func safetensorsValuesMatchPython() throws {
        let t = try Safetensors.read(path: Fixtures.path("format/tiny.safetensors"))
        assertMatches(t, names: ["a.f32", "b.f16", "c.bf16", "d.scalar", "e.ids"])
    }

    @Test func torchZipValuesMatchPython() throws {
        let t = try TorchCheckpoint.read(path: Fixtures.path("format/tiny.pt"))
        assertMatches(t, names: ["a.f32", "b.f16", "c.bf16", "d.scalar", "e.ids", "f.transposed", "g.offset_view"])
    }

    @Test func torchTrainingCheckpointNestsTheModel() throws {
        let t = try TorchCheckpoint.read(path: Fixtures.path("format/nested.pt"))
        assertMatches(t, names: ["a.f32"])
    }

    @Test func maliciousPickleIsRefusedWithoutRunning() throws {
        try? FileManager.default.removeItem(atPath: "/tmp/msgen-pwned")
        #expect {
            _ = try TorchCheckpoint.read(path: Fixtures.path("format/evil.pt"))
        } throws: { e in
            "\(e)".contains("refusing to load") && "\(e)".contains("posix.system")
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/msgen-pwned"))
    }

    @Test func damagedSafetensorsAreClearErrors() throws {
        let dir = TempDir()
        let good = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("format/tiny.safetensors")))
        let cases: [(Data, String)] = [
            (good.prefix(5), "too short"),
            (good.prefix(good.count - 10), "outside the file"),
            (Data([255, 255, 255, 255, 0, 0, 0, 0]) + good.dropFirst(8), "header length"),
            (good.prefix(8) + Data(repeating: UInt8(ascii: "x"), count: good.count - 8), "not a JSON object"),
            (
                safetensors(header: #"{"t": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}"#, data: 4),
                "17 dimensions, more than the 16"
            ),
        ]
        for (i, (bytes, message)) in cases.enumerated() {
            let p = dir.path("bad\(i).safetensors")
            try bytes.write(to: URL(fileURLWithPath: p))
            #expect { _ = try Safetensors.read(path: p) } throws: { "\($0)".contains(message) }
        }
    }

    /// A safetensors file of this header JSON and `data` zero bytes.
    func safetensors(header: String, data: Int) -> Data {
        var out = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        return out + Data(header.utf8) + Data(count: data)
    }

    @Test func zip64OffsetsPast2To63AreRefusedBeforeZIPFoundationSeeks() throws {
        // Found by the torch fuzzer: a ZIP64 end record whose directory offset does not
        // fit off_t trapped inside ZIPFoundation. (The fuzz input's first byte is its mode.)
        let input = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("fuzz/torch/crash-zip64-offset-e564b537")))
        let dir = TempDir(), p = dir.path("zip64.pt")
        try input.dropFirst().write(to: URL(fileURLWithPath: p))
        #expect { _ = try TorchCheckpoint.read(path: p) } throws: { "\($0)".contains("is not a PyTorch zip checkpoint") }
        // The real checkpoints still read.
        #expect(try TorchCheckpoint.read(path: Fixtures.path("format/tiny.pt")).count > 0)
    }

    @Test func damagedTorchArchiveIsAClearError() throws {
        let dir = TempDir()
        var bytes = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("format/tiny.pt")))
        // Flip a byte inside the stored tensor data: the zip CRC catches it.
        let first = Float(Self.expected["a.f32"]!.values[0])
        let at = bytes.range(of: withUnsafeBytes(of: first) { Data($0) })!.lowerBound
        bytes[at] ^= 0xFF
        let p = dir.path("flipped.pt")
        try bytes.write(to: URL(fileURLWithPath: p))
        #expect(throws: MSGenError.self) { _ = try TorchCheckpoint.read(path: p) }
        try Data("not a zip".utf8).write(to: URL(fileURLWithPath: dir.path("text.pt")))
        #expect { _ = try TorchCheckpoint.read(path: dir.path("text.pt")) } throws: { "\($0)".contains("not a PyTorch") }
    }
}
