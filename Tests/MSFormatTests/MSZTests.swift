import Foundation
import Testing

@testable import MSFormat

/// Round trips through .msz for every dtype, against error bounds that follow from the
/// number formats themselves (not from our own conversion code).
struct MSZTests {
    static func randomTensor(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var rng = XorShift(state: seed)
        return Tensor(shape: shape, floats: (0..<elementCount(shape)!).map { _ in rng.normal() * scale })
    }

    static func write(_ tensors: [(name: String, tensor: Tensor)], to path: String) throws {
        try MSZWriter.write(
            path: path, architecture: "cst-decoder", config: .object(["k": .string("v")]),
            tokenizer: "{\"model\": {}}", tensors: tensors, provenance: ["source": .string("test")])
    }

    @Test(arguments: [DType.f32, .f16, .bf16, .q8])
    func roundTrip(dtype: DType) throws {
        let dir = TempDir()
        // Sizes cross the 1 MiB byte-plane block and include a vector and an empty tensor.
        let originals = [
            ("big", Self.randomTensor([2100, 256], seed: 1, scale: 3)),
            ("small", Self.randomTensor([2, 32], seed: 2, scale: 1e-3)),
            ("vector", Self.randomTensor([7], seed: 3)),
            ("empty", Tensor(shape: [0, 4], floats: [])),
        ]
        let stored = originals.map { (name, t) in
            (name: name, tensor: t.converted(to: dtype == .q8 && !t.canQuantize ? .f32 : dtype))
        }
        try Self.write(stored, to: dir.path("m.msz"))
        let file = try MSZFile(path: dir.path("m.msz"))
        #expect(file.architecture == "cst-decoder")
        #expect(file.config == .object(["k": .string("v")]))
        #expect(file.tokenizerJSON == "{\"model\": {}}")
        let loaded = try file.load()
        for ((name, original), s) in zip(originals, stored) {
            let back = loaded[name]!
            #expect(back.dtype == s.tensor.dtype && back.shape == original.shape)
            // The file gives back exactly the bytes that were stored ...
            #expect(Array(back.storage.bytes) == Array(s.tensor.storage.bytes), "\(name)")
            // ... and those are within the format's error of the original values.
            let x = original.floats(), y = back.floats()
            var violations: [String] = []
            for b in stride(from: 0, to: x.count, by: 32) {
                let block = b..<min(b + 32, x.count)
                let amax = block.map { abs(x[$0]) }.max()!
                for i in block {
                    let bound: Float =
                        switch back.dtype {
                        case .f32: 0
                        case .f16: abs(x[i]) * 0x1p-11 + 0x1p-25  // half an ulp, or a subnormal step
                        case .bf16: abs(x[i]) * 0x1p-8
                        default: 0.51 * amax / 127 + 1e-7
                        }
                    if !(abs(x[i] - y[i]) <= bound) { violations.append("\(name)[\(i)] \(x[i]) -> \(y[i])") }
                }
            }
            #expect(violations.isEmpty, "\(violations.prefix(5))")
        }
    }

    @Test func planesCompressRealisticWeightsBetter() throws {
        // The reason for byte planes (Sources/MSFormat/FORMAT.md): the same f16 bytes compress better.
        let t = Self.randomTensor([1024, 512], seed: 9, scale: 0.02).converted(to: .f16)
        let raw = UnsafeRawBufferPointer(t.storage.bytes)
        let plain = try Zstd.compress(raw, level: 3).count
        let planes = try BytePlanes.shuffle(raw, elementSize: 2).withUnsafeBytes { try Zstd.compress($0, level: 3) }.count
        #expect(planes < plain)
    }

    @Test func loadsOnlyWhatIsAsked() throws {
        let dir = TempDir()
        try Self.write([("a", Self.randomTensor([4], seed: 1)), ("b", Self.randomTensor([4], seed: 2))], to: dir.path("m.msz"))
        let file = try MSZFile(path: dir.path("m.msz"))
        #expect(try Set(file.load(["b"]).keys) == ["b"])
        #expect { _ = try file.load(["nope"]) } throws: { "\($0)".contains("no tensor named nope") }
    }

    @Test func writerRefusesDuplicateNames() throws {
        let dir = TempDir()
        #expect { try Self.write([("a", Self.randomTensor([4], seed: 1)), ("a", Self.randomTensor([4], seed: 2))], to: dir.path("m.msz")) } throws: {
            "\($0)".contains("duplicate")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.path("m.msz")))
    }
}
