import Foundation
import MSFormat
import Testing

@testable import MSModels

/// The multi-scale decoders (top-down, bottom-up; Sources/MSModels/README.md). Their golden fixtures also
/// run through every test of DecoderTests and CacheTests (logits equal the PyTorch
/// reference, prefill k then decode at every k, chunked prefill and batched steps equal
/// token by token); this file holds what is particular to them.
struct MultiScaleTests {
    static let fixtures = Golden.names(prefix: "topdown_") + Golden.names(prefix: "bottomup_")

    @Test func fixturesCoverBothArchitecturesAndSeveralScales() throws {
        let configs = try Self.fixtures.map { try MultiScaleConfig(ConfigReader(Golden($0).json), architecture: Golden($0).config.architecture) }
        #expect(Set(configs.map(\.common.architecture)) == ["top-down-decoder", "bottom-up-decoder"])
        #expect(Set(configs.map(\.poolFactor)).count >= 3 && Set(configs.map(\.scales)) == [2, 3])
    }

    /// The fixture's config with some keys changed (nil removes the key).
    static func config(_ name: String, _ changes: [String: JSONValue?]) throws -> (JSONValue, [String: Tensor]) {
        let g = try Golden(name)
        var o = g.json.objectValue!
        for (k, v) in changes { o[k] = v }
        return (.object(o), g.tensors)
    }

    static func error(_ name: String, _ changes: [String: JSONValue?]) throws -> String? {
        let (json, tensors) = try config(name, changes)
        do { _ = try Architectures.languageModel(config: json, tensors: tensors); return nil } catch { return "\(error)" }
    }

    /// Sizes that do not divide, a `layers_per_scale` of the wrong length and missing keys
    /// are refused with one line that says which.
    @Test func badConfigsAreRefusedWithOneClearLine() throws {
        let td = "topdown_k2_s3_untied_gelu", bu = "bottomup_k4_s2_tied_gelu_agg2"
        let cases: [(String, [String: JSONValue?], String)] = [
            (td, ["max_positions": .number(18)], "config 'max_positions' 18 is not a multiple of pool_factor^(scales−1) = 2^2"),
            (bu, ["max_positions": .number(30)], "config 'max_positions' 30 is not a multiple of pool_factor^(scales−1) = 4^1"),
            (
                td, ["layers_per_scale": .array([.number(1), .number(1)])],
                "config 'layers_per_scale' has 2 entries; it needs one per scale ('scales' is 3)"
            ),
            (td, ["scales": .number(40)], "config 'layers_per_scale' has 3 entries; it needs one per scale ('scales' is 40)"),
            (td, ["pool_factor": .number(1)], "config 'pool_factor' must be an integer ≥ 2, not 1"),
            (td, ["scales": nil], "config is missing 'scales'"),
            (td, ["layers_per_scale": nil], "config is missing 'layers_per_scale'"),
            (bu, ["agg_layers": nil], "config is missing 'agg_layers'"),
            (bu, ["pool_factor": nil], "config is missing 'pool_factor'"),
        ]
        for (name, changes, message) in cases {
            let e = try Self.error(name, changes)
            #expect(e == message, "\(changes)")
            #expect(e.map { !$0.contains("\n") } ?? false)
        }
        // 40 scales of k = 2 with 40 layer counts: the block size would overflow; still one line.
        let many = try Self.error(td, ["scales": .number(70), "layers_per_scale": .array(Array(repeating: .number(1), count: 70))])
        #expect(many == "config 'max_positions' 16 is not a multiple of pool_factor^(scales−1) = 2^69")
    }

    /// Tensor names follow §8: a missing per-scale tensor is named.
    @Test func missingScaleTensorIsNamed() throws {
        var (json, tensors) = try Self.config("bottomup_k2_s3_untied_gelutanh", [:])
        tensors["agg.2.bias"] = nil
        tensors["scales.2.pos.weight"] = nil
        #expect { _ = try Architectures.languageModel(config: json, tensors: tensors) } throws: {
            "\($0)".contains("missing scales.2.pos.weight [4, 16]") && "\($0)".contains("missing agg.2.bias [16]")
        }
    }

    /// A coarse scale holds one row per complete block, so at the context the cache is the
    /// baseline's token-level keys and values plus N/b_s rows per coarse scale; it grows
    /// only by a coarse row when a block completes, and cannot decode past N.
    @Test func cacheRowsAndBytes() throws {
        for name in Self.fixtures {
            let g = try Golden(name)
            let model = try decoder(g)
            let c = try MultiScaleConfig(ConfigReader(g.json), architecture: g.config.architecture)
            #expect(!model.canDecodePastContext)
            let cache = own(model.makeCache(), as: MultiScaleCache.self)
            let ids = (0..<c.maxPositions).map { g.ids[$0 % g.ids.count] }
            var last = 0
            for (i, id) in ids.enumerated() {
                _ = model.step(id, cache: cache)
                for s in 0..<c.scales { #expect(cache.scales[s].rows == (i + 1) / c.blockSize(s)) }
                #expect(cache.byteCount > last)
                last = cache.byteCount
            }
            let D = c.common.dModel
            let rows = (0..<c.scales).map { c.layersPerScale[$0] * c.rows($0) }.reduce(0, +) + c.aggLayers * c.maxPositions
            #expect(cache.byteCount == rows * 2 * D * 4 + c.scales * 2 * D * 4, "\(name)")
            #expect(throws: MSGenError.self) { _ = try model.prefill([1], cache: cache, logitsFor: 0..<1) }
        }
    }

    /// A row of a coarse scale changes the next token's logits (the scales are wired in):
    /// zeroing one scale's newest row in the cache changes the step's logits.
    @Test func coarseRowsReachTheTokens() throws {
        for name in Self.fixtures {
            let g = try Golden(name)
            let model = try decoder(g)
            let c = try MultiScaleConfig(ConfigReader(g.json), architecture: g.config.architecture)
            let n = c.blockSize(c.scales - 1)  // the first coarsest row is complete
            let a = own(model.makeCache(), as: MultiScaleCache.self), b = own(model.makeCache(), as: MultiScaleCache.self)
            _ = try model.prefill(Array(g.ids[0..<n]), cache: a, logitsFor: 0..<0)
            _ = try model.prefill(Array(g.ids[0..<n]), cache: b, logitsFor: 0..<0)
            b.scales[1].newest.zero()
            let x = model.step(g.ids[n], cache: a), y = model.step(g.ids[n], cache: b)
            #expect(maxError(x[...], y[...]) > 1e-3, "\(name)")
        }
    }
}
