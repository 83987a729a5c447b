import Foundation
import Testing

@testable import MSFormat

/// Damaged and hostile model files: each must be refused with a clear message (or, where
/// the damage leaves the content intact, load exactly the original) — never trap.
struct CorruptionTests {
    let dir = TempDir()
    let good: Data
    let original: [String: [UInt8]]

    init() throws {
        let tensors = [
            ("a", MSZTests.randomTensor([64, 32], seed: 1).converted(to: .f16)),
            ("b", MSZTests.randomTensor([32, 32], seed: 2).converted(to: .q8)),
            ("c", MSZTests.randomTensor([5], seed: 3)),
        ]
        try MSZTests.write(tensors.map { (name: $0.0, tensor: $0.1) }, to: dir.path("good.msz"))
        good = try Data(contentsOf: URL(fileURLWithPath: dir.path("good.msz")))
        original = Dictionary(uniqueKeysWithValues: tensors.map { ($0.0, Array($0.1.storage.bytes)) })
    }

    /// Opens and fully loads `bytes`; returns the error message, or nil if it loaded.
    func open(_ bytes: Data, name: String = "bad.msz") -> (error: String?, tensors: [String: Tensor]) {
        let p = dir.path(name)
        try! bytes.write(to: URL(fileURLWithPath: p))
        do {
            let t = try MSZFile(path: p).load()
            return (nil, t)
        } catch {
            #expect(error is MSGenError)
            return ("\(error)", [:])
        }
    }

    var headerSize: Int { Int(good.subdata(in: 8..<16).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }) }

    /// The header JSON, changed by `edit`, written back as a valid frame.
    func withHeader(_ edit: (inout [String: Any]) -> Void) throws -> Data {
        let frame = good.subdata(in: 16..<(16 + headerSize))
        var json = Data(count: Zstd.contentSize(frame.withUnsafeBytes { $0 })!)
        try frame.withUnsafeBytes { f in try json.withUnsafeMutableBytes { try Zstd.decompress(f, into: $0, what: "h") } }
        var obj = try JSONSerialization.jsonObject(with: json) as! [String: Any]
        edit(&obj)
        let newFrame = try JSONSerialization.data(withJSONObject: obj).withUnsafeBytes { try Zstd.compress($0, level: 3) }
        var out = good.prefix(8)
        withUnsafeBytes(of: UInt64(newFrame.count).littleEndian) { out.append(contentsOf: $0) }
        return out + Data(newFrame) + good.suffix(from: 16 + headerSize)
    }

    func editTensor(_ i: Int, _ key: String, _ value: Any) throws -> Data {
        try withHeader { h in
            var t = h["tensors"] as! [[String: Any]]
            t[i][key] = value
            h["tensors"] = t
        }
    }

    @Test func goodFileLoads() {
        let (error, tensors) = open(good)
        #expect(error == nil)
        #expect(tensors.mapValues { Array($0.storage.bytes) } == original)
    }

    @Test func truncationAtEveryBoundaryAndInsideFrames() throws {
        let file = try MSZFile(path: dir.path("good.msz"))
        let dataStart = 16 + headerSize
        var cuts = [0, 1, 4, 8, 15, 16, 16 + headerSize / 2, dataStart - 1, dataStart, good.count - 1]
        for t in file.tensors { cuts += [dataStart + t.offset, dataStart + t.offset + t.storedBytes / 2] }
        for cut in Set(cuts) where cut < good.count {
            let (error, _) = open(good.prefix(cut))
            #expect(error != nil, "truncated at \(cut) loaded")
        }
    }

    @Test func everyFlippedByteIsCaughtOrHarmless() throws {
        // Bytes 16… are the header frame and the tensor frames: flip each in turn.
        for i in 16..<good.count {
            var bad = good
            bad[i] ^= 0x5A
            let (error, tensors) = open(bad)
            if error == nil {
                #expect(tensors.mapValues { Array($0.storage.bytes) } == original, "flip at \(i) loaded wrong values")
            }
        }
    }

    @Test func aHeaderFrameClaimingMoreThanItCanHoldIsRefusedBeforeAllocating() {
        // A 13-byte zstd frame header (single segment, 8-byte content size) declaring
        // 512 MiB: under the header limit, but no 13 bytes of zstd expand that far.
        var frame: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xE0]
        withUnsafeBytes(of: UInt64(1 << 29).littleEndian) { frame += $0 }
        var file = MSZ.magic
        withUnsafeBytes(of: MSZ.version.littleEndian) { file += $0 }
        withUnsafeBytes(of: UInt64(frame.count).littleEndian) { file += $0 }
        let error = open(Data(file + frame)).error
        #expect(error?.contains("larger than its 13 stored bytes can hold") == true, "\(error ?? "success")")
    }

    @Test func wrongMagicFutureVersionAndOversizedHeader() throws {
        var bad = good; bad[0] = UInt8(ascii: "X")
        #expect(open(bad).error?.contains("not an msgen model") == true)
        bad = good; bad[4] = 2
        #expect(open(bad).error?.contains("format version 2") == true)
        bad = good; bad[15] = 0x10
        #expect(open(bad).error?.contains("larger than the file") == true)
        #expect(open(Data()).error?.contains("too short") == true)
        #expect(open(Data("hello, this is a text file".utf8)).error?.contains("not an msgen model") == true)
    }

    @Test func hostileHeaders() throws {
        let cases: [(Data, String)] = [
            (try editTensor(0, "shape", [1 << 40, 1 << 40]), "impossible shape"),
            (try editTensor(0, "shape", [-1, 4]), "impossible shape"),
            (try editTensor(1, "shape", [3, 7]), "impossible shape"),  // q8 needs whole blocks
            (try editTensor(1, "name", "a"), "appears twice"),
            (try editTensor(0, "dtype", "f64"), "unknown dtype"),
            (try editTensor(0, "offset", 1 << 50), "outside the file"),
            (try editTensor(2, "offset", 0), "overlaps"),
            (try editTensor(0, "shape", [64, 16]), "declares"),  // frame size ≠ shape
            // 512 GB claimed: more than any frame of its size can expand to (the fuzzers' limits).
            (try editTensor(0, "shape", [1 << 19, 1 << 19]), "needs 549755813888 bytes, more than its"),
            (try editTensor(2, "shape", [Int](repeating: 1, count: FormatLimits.maxDimensions + 1)), "17 dimensions, more than the 16"),
            (try editTensor(0, "layout", "zigzag"), "unknown layout"),
            (try withHeader { $0["tensors"] = 5 }, "corrupt header"),
            (try withHeader { $0.removeValue(forKey: "architecture") }, "missing key 'architecture'"),
            (good + Data([1, 2, 3]), "unexpected bytes"),
        ]
        for (bytes, message) in cases {
            let error = open(bytes).error
            #expect(error?.contains(message) == true, "expected '\(message)', got \(error ?? "success")")
        }
    }

    @Test func cliReportsOneLineAndFails() throws {
        var bad = good; bad[good.count - 3] ^= 0xFF
        try bad.write(to: URL(fileURLWithPath: dir.path("bad.msz")))
        for args in [
            ["inspect", "--verify", dir.path("bad.msz")], ["inspect", dir.path("missing.msz")],
            ["inspect", dir.url.path],
        ] {
            let r = try CLI.run(args)
            #expect(r.status != 0)
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(args): \(r.stderr)")
            #expect(!r.stderr.contains("Fatal error"))
        }
    }
}
