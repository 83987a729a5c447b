import Foundation
import MSFormat
import MSGen
import MSModels
import MSTokenizer
import Testing

@testable import msgen

/// A toy architecture registered from outside MSModels goes through `msgen convert` and
/// is scored by the perplexity scorer, with nothing else changed: the registry is the seam.
struct RegistryTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    let V = 300, D = 8

    /// Seeded weights in [−1, 1).
    func weights(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(rng.next() >> 40) / Float(1 << 23) - 1 }
    }

    /// A checkpoint directory: config.json, model.safetensors, the fixtures' tokenizer.
    func checkpoint(in dir: URL, extra: [String: Tensor] = [:]) throws {
        let config: [String: Any] = ["architecture": "bigram-decoder", "vocab_size": V, "d_model": D, "n_heads": 1, "d_ff": 1, "max_positions": 64]
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        var tensors = [
            "embed.weight": Tensor(shape: [V, D], floats: weights(V * D, seed: 1)),
            "lm_head.weight": Tensor(shape: [V, D], floats: weights(V * D, seed: 2)),
        ]
        tensors.merge(extra) { a, _ in a }
        try safetensors(tensors).write(to: dir.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(
            at: Self.fixtures.appendingPathComponent("golden/cst_a1_shared_tied_gelu/tokenizer.json"),
            to: dir.appendingPathComponent("tokenizer.json"))
    }

    /// float32 tensors in the safetensors layout: an 8-byte little-endian header length,
    /// the JSON header, then the data.
    func safetensors(_ tensors: [String: Tensor]) throws -> Data {
        var header: [String: Any] = [:], data = Data()
        for (name, t) in tensors.sorted(by: { $0.key < $1.key }) {
            let values = t.floats()
            header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [data.count, data.count + 4 * values.count]]
            values.withUnsafeBytes { data.append(contentsOf: $0) }
        }
        let json = try JSONSerialization.data(withJSONObject: header)
        var n = UInt64(json.count).littleEndian
        return Data(bytes: &n, count: 8) + json + data
    }

    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func toyArchitectureConvertsAndScores() throws {
        Architectures.register(BigramDecoder.architecture)
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try checkpoint(in: dir)
        let out = dir.appendingPathComponent("bigram.msz").path
        try Convert.parse([dir.path, "-o", out]).run()

        let file = try MSZFile(path: out)
        #expect(file.architecture == "bigram-decoder")
        #expect(file.tensors.map(\.name) == ["embed.weight", "lm_head.weight"])
        let model = try loadLanguageModel(file)
        let tokenizer = try BPETokenizer(json: file.tokenizerJSON!)
        let text = try String(contentsOf: Self.fixtures.appendingPathComponent("perplexity/psalm.txt"), encoding: .utf8)
        let ids = tokenizer.encode(text)
        let result = try Scorer(model: model, tokenizer: tokenizer).score(ids, context: 16, stride: 15)

        // The bigram's log-likelihood computed directly, in Double, from the same weights.
        let E = weights(V * D, seed: 1).map(Double.init), W = weights(V * D, seed: 2).map(Double.init)
        var nll = 0.0
        for i in 1..<ids.count {
            let logits = (0..<V).map { v in (0..<D).reduce(0.0) { $0 + W[v * D + $1] * E[ids[i - 1] * D + $1] } }
            let m = logits.max()!
            nll -= logits[ids[i]] - m - log(logits.reduce(0) { $0 + exp($1 - m) })
        }
        #expect(result.count == ids.count - 1)
        #expect(abs(result.nll - nll) / nll < 1e-5, "scorer \(result.nll), direct \(nll)")
    }

    /// The toy's tensor names come from what its init reads: a left-over tensor is
    /// refused at convert with the same message as for the built-in architectures.
    @Test func toyArchitectureValidatesByWhatItReads() throws {
        Architectures.register(BigramDecoder.architecture)
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try checkpoint(in: dir, extra: ["pos.weight": Tensor(shape: [64, D], floats: weights(64 * D, seed: 3))])
        #expect { try Convert.parse([dir.path, "-o", dir.appendingPathComponent("x.msz").path]).run() } throws: {
            "\($0)" == "weights do not match the bigram-decoder config: unexpected pos.weight"
        }
    }
}

/// Configs no checkpoint could match (found by the config fuzzer): each is one error,
/// never an overflow trap or an allocation sized by the config alone.
struct HostileConfigTests {
    func config(_ architecture: String, _ changes: [String: Int] = [:]) -> JSONValue {
        var c = [
            "vocab_size": 291, "d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 1, "slice_length": 4,
            "extension_ratio": 3, "max_slices": 4, "max_positions": 64,
        ]
        c.merge(changes) { _, new in new }
        return .object(c.mapValues { .number(Double($0)) }.merging(["architecture": .string(architecture)]) { a, _ in a })
    }

    func loadError(_ config: JSONValue) -> String {
        do { _ = try Architectures.load(config: config, tensors: [:]); return "loaded" } catch { return "\(error)" }
    }

    @Test func aConfigFarLargerThanItsCheckpointStopsBeforeAllocating() {
        // vocab × d_model = 2^24 × 2^12 floats: 256 GiB of zeros standing in for the missing
        // embedding, before the fix.
        for arch in ["cst-decoder", "transformer-decoder"] {
            let e = loadError(config(arch, ["vocab_size": 16_777_216, "d_model": 4096, "n_heads": 1]))
            #expect(e.contains("missing embed.weight [16777216, 4096]") && e.contains("far more than the checkpoint holds"), "\(e)")
        }
        // A config of ordinary size with no tensors still lists what is missing.
        let e = loadError(config("cst-decoder"))
        #expect(e.contains("missing embed.weight [291, 32]") && e.contains("and 1") && !e.contains("far more"), "\(e)")
    }

    @Test func aConfigOfManyLayersStopsAfterAThousandProblems() {
        // Found by the config fuzzer: 5002 small layers took 10 s to fill with zeros.
        let e = loadError(config("cst-decoder", ["n_layers": 5002]))
        #expect(e.contains("missing embed.weight") && e.contains("far more than the checkpoint holds"), "\(e)")
    }

    @Test func sizesWhoseProductsOverflowAreRefused() {
        // max_slices × slice_length is the context: 2^40 × 2^40 overflowed, a trap.
        let e = loadError(config("cst-decoder", ["max_slices": 1_099_511_627_776, "slice_length": 1_099_511_627_776]))
        #expect(e == "config 'slice_length' is 1099511627776, more than the 16777216 msgen allows for any size", "\(e)")
        #expect(loadError(config("transformer-decoder", ["vocab_size": 16_777_217])).contains("'vocab_size' is 16777217, more than the 16777216"))
    }
}
