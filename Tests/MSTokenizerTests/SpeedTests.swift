import Foundation
import MSTokenizer
import Testing

/// The whole KJV Bible (tools/data/kjv, made by msgen_tools.corpus), or the fixture texts
/// repeated when that is absent, encodes and decodes back to the same bytes; the encoding
/// speed is printed, not asserted (timings on a shared machine make poor assertions).
@Suite struct SpeedTests {
    @Test func wholeCorpusRoundTripsAndEncodeSpeed() throws {
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
        var ids: [Int] = []
        for _ in 0..<runs {
            let start = DispatchTime.now().uptimeNanoseconds
            ids = tok.encode(text)
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        let count = ids.count
        #expect(count > 0)
        #expect(tok.decode(ids) == Array(text.utf8))
        print(
            "encode \(source): \(text.utf8.count) bytes -> \(count) tokens in \(String(format: "%.3f", best)) s"
                + " = \(String(format: "%.2f", Double(count) / best / 1e6)) M tokens/s (\(build), one thread)")
    }
}
