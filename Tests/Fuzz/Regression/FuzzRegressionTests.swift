import Foundation
import MSFuzzEntries
import Testing

/// Replays every input the fuzzers ever failed on (Tests/Fixtures/fuzz/<target>/*),
/// through the same entry function libFuzzer calls: each must now be accepted or refused
/// with an MSGenError. A regression traps here, so `swift test` fails on it.
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz")

    @Test func everyCommittedFuzzInputIsHandled() throws {
        var replayed = 0
        for target in FuzzTarget.allCases {
            let dir = Self.root.appendingPathComponent(target.rawValue)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            for name in files.sorted() where !name.hasPrefix(".") {
                target.run(Array(try Data(contentsOf: dir.appendingPathComponent(name))))
                replayed += 1
            }
        }
        // An empty walk would mean the path above is wrong and this test passed vacuously.
        #expect(replayed >= 4, "only \(replayed) fuzz inputs under \(Self.root.path)")
    }
}
