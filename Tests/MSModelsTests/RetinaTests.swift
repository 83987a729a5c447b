import Foundation
import MSFormat
import Testing

@testable import MSModels

/// The retina decoder (§8 c) against the PyTorch reference far past its reach, and its
/// bounded state. DecoderTests and CacheTests run the checks every decoder shares on these
/// fixtures too (prefill then decode up to the reach, chunked prefill, batched step).
struct RetinaTests {
    static let fixtures = Golden.names(prefix: "retina_")

    @Test func fixturesExist() throws {
        #expect(Self.fixtures.count >= 3)
        for name in Self.fixtures {
            let g = try Golden(name)
            let c = try RetinaConfig(ConfigReader(g.json))
            #expect(g.config.context == c.reach, "\(name): the default window is the reach")
            #expect(g.ids.count >= 3 * c.reach, "\(name): the fixture runs several times the reach")
        }
    }

    /// One batched pass over the whole fixture, far past the reach: every position.
    @Test(arguments: fixtures)
    func batchedForwardMatchesReferenceAtEveryPosition(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let T = g.ids.count
        let logits = try model.prefill(g.ids, cache: model.makeCache(), logitsFor: 0..<T)
        let err = maxError(logits[...], g.logits[...])
        #expect(err < 1e-4, "max error \(err)")
    }

    /// Prefill k tokens then decode the rest one by one equals the reference at every
    /// position, for every k up to the whole fixture.
    @Test(arguments: fixtures)
    func prefillAnyKThenDecodeMatchesReference(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let T = g.ids.count
        for k in 0...T {
            let cache = model.makeCache()
            var logits = try model.prefill(Array(g.ids[0..<k]), cache: cache, logitsFor: 0..<k)
            for i in k..<T { logits += model.step(g.ids[i], cache: cache) }
            let err = maxError(logits[...], g.logits[...])
            #expect(err < 1e-4, "k = \(k): max error \(err)")
        }
    }

    /// The cache takes the same bytes at 1×, 10× and 100× the reach (and they are what
    /// §8 c says: ring of E+L keys and values, M open sums, M·w [gk | gv] rows, g), and
    /// decoding goes on past any length.
    @Test(arguments: fixtures)
    func cacheBytesAreFlat(_ name: String) throws {
        let g = try Golden(name)
        let model = try decoder(g)
        let c = try RetinaConfig(ConfigReader(g.json))
        let D = c.common.dModel, W = c.leftExtension + c.sliceLength
        let expected = c.nLayers * (2 * W * D + c.levels * D + c.levels * c.levelWindow * 2 * D + D) * 4
        let cache = model.makeCache()
        var bytes: [Int] = []
        var at = 0
        for n in [1, 10, 100].map({ $0 * c.reach }) {
            let ids = (at..<n).map { g.ids[$0 % g.ids.count] }
            _ = try model.prefill(chunked: ids, cache: cache, chunk: 97) { _, _ in }
            at = n
            #expect(cache.position == n)
            bytes.append(cache.byteCount)
        }
        #expect(bytes == [expected, expected, expected])
        let next = model.step(g.ids[0], cache: cache)
        #expect(next.count == c.common.vocabSize && next.allSatisfy(\.isFinite))
        #expect(cache.byteCount == expected)
    }

    /// Bad retina configs are one clear error each.
    @Test func configErrors() throws {
        let g = try Golden(Self.fixtures[0])
        guard case .object(let base) = g.json else { Issue.record("config is not an object"); return }
        func message(_ change: (inout [String: JSONValue]) -> Void) -> String? {
            var o = base
            change(&o)
            do { _ = try RetinaConfig(ConfigReader(.object(o))); return nil } catch { return "\(error)" }
        }
        #expect(message { $0["levels"] = nil } == "config is missing 'levels'")
        #expect(message { $0["pool_factor"] = .number(1) } == "config 'pool_factor' must be an integer ≥ 2, not 1")
        #expect(message { $0["level_window"] = .number(0) } == "config 'level_window' must be an integer ≥ 1, not 0")
        #expect(message { $0["levels"] = .number(80) }?.contains("too large") == true)
        #expect(message { _ in } == nil)
    }

    /// `perplexity` streams a retina model by default; other models score in windows.
    @Test func prefersStreaming() throws {
        #expect(try decoder(try Golden(Self.fixtures[0])).prefersStreaming)
        #expect(try !decoder(try Golden("cst_a1_shared_tied_gelu")).prefersStreaming)
    }
}
