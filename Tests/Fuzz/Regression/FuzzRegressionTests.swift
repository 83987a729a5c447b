import Foundation
import MSFuzzEntries
import XCTest

/// Replays every input the fuzzers ever crashed on (Tests/Fixtures/fuzz/<target>/*),
/// through the same entry function libFuzzer calls: each must now be accepted or refused
/// with an MSGenError. A regression traps here, so `swift test` fails on it.
final class FuzzRegressionTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz")

    func testEveryCommittedCrashInputIsHandled() throws {
        var replayed = 0
        for target in FuzzTarget.allCases {
            let dir = Self.root.appendingPathComponent(target.rawValue)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            for name in files.sorted() where !name.hasPrefix(".") {
                target.run(Array(try Data(contentsOf: dir.appendingPathComponent(name))))
                replayed += 1
            }
        }
        // The directory is never empty once a crash was found; an empty walk means the
        // path above is wrong, which would make this test pass vacuously.
        XCTAssertGreaterThan(replayed, 0, "no fuzz regression inputs under \(Self.root.path)")
    }
}
