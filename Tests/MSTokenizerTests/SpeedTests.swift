import Foundation
import Testing
import MSTokenizer

/// Encoding speed on the KJV Bible (tools/data/kjv, made by msgen_tools.corpus), or on the
/// fixture texts repeated when that is absent. Prints only: timings on a shared machine
/// make poor assertions.
@Suite struct SpeedTests {
    @Test func encodeSpeed() throws {
        let kjv = Fixtures.repoRoot.appendingPathComponent("tools/data/kjv")
        var text = ""
        for split in ["train", "valid", "test"] {
            text += (try? String(contentsOf: kjv.appendingPathComponent("\(split).txt"), encoding: .utf8)) ?? ""
        }
        let source = text.isEmpty ? "fixture texts ×200" : "KJV"
        if text.isEmpty {
            let lines = try Fixtures.cases("cases.json").map(\.text).joined(separator: "\n")
            text = String(repeating: lines + "\n", count: 200)
        }
        #if DEBUG
        let (build, runs) = ("debug build", 1)
        #else
        let (build, runs) = ("release build", 3)
        #endif
        let tok = Fixtures.tokenizer
        var best = Double.infinity
        var count = 0
        for _ in 0..<runs {
            let start = DispatchTime.now().uptimeNanoseconds
            count = tok.encode(text).count
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        #expect(count > 0)
        print("encode \(source): \(text.utf8.count) bytes -> \(count) tokens in \(String(format: "%.3f", best)) s"
              + " = \(String(format: "%.2f", Double(count) / best / 1e6)) M tokens/s (\(build), one thread)")
    }
}
