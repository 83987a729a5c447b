import Foundation
import MSFormat
import MSGen
import Testing

/// Weights stay in their stored dtype from file to kernel: a q8 model's resident memory
/// is about its raw q8 bytes, not the f32 it would widen to.
struct MemoryTests {
    /// The fixed part of `msgen bench`'s peak RSS that does not scale with the model: the
    /// Swift runtime and Foundation, OpenBLAS's buffers, the prefill's activations. Measured
    /// with the debug build on the bundled 4.6 MB q8 CST: 35.3 MB in all, so ~31 MB of it.
    static let runtimeOverhead = 40_000_000

    /// A CST of 13.8 M parameters (d_model 384, 6 layers, d_ff 1,536, vocabulary 8,192)
    /// written as an f32 .msz, with values from a small random pool (their values do not
    /// matter here, only their count).
    static func writeModel(_ path: String) throws {
        let (D, layers, F, V) = (384, 6, 1536, 8192)
        var rng = SplitMix64(seed: 7)
        let pool = (0..<4099).map { _ in Float(Int(rng.next() >> 41)) / Float(1 << 23) * 0.04 - 0.02 }
        var made = 0
        func tensor(_ shape: [Int]) -> Tensor {
            let n = shape.reduce(1, *)
            made += n
            return Tensor(shape: shape, floats: (0..<n).map { pool[($0 &* 7919 &+ made) % pool.count] })
        }
        var t: [(name: String, tensor: Tensor)] = [
            ("embed.weight", tensor([V, D])), ("pos_local.weight", tensor([16, D])),
            ("pos_global.weight", tensor([16, D])),
        ]
        for i in 0..<layers {
            let p = "layers.\(i)."
            for n in ["norm1", "norm2"] { t += [(p + n + ".weight", tensor([D])), (p + n + ".bias", tensor([D]))] }
            for x in ["q", "k", "v", "o"] { t += [(p + "attn.\(x)_proj.weight", tensor([D, D])), (p + "attn.\(x)_proj.bias", tensor([D]))] }
            t += [
                (p + "mlp.fc1.weight", tensor([F, D])), (p + "mlp.fc1.bias", tensor([F])),
                (p + "mlp.fc2.weight", tensor([D, F])), (p + "mlp.fc2.bias", tensor([D])),
            ]
        }
        t += [("norm_f.weight", tensor([D])), ("norm_f.bias", tensor([D]))]
        let config: JSONValue = .object([
            "architecture": .string("cst-decoder"), "vocab_size": .number(Double(V)), "d_model": .number(Double(D)),
            "n_layers": .number(Double(layers)), "n_heads": .number(6), "d_ff": .number(Double(F)), "slice_length": .number(16),
            "extension_ratio": .number(1), "max_slices": .number(16), "tie_embeddings": .bool(true),
        ])
        try MSZWriter.write(path: path, architecture: "cst-decoder", config: config, tokenizer: nil, tensors: t, provenance: [:])
    }

    /// Peak RSS, weight dtype and cache bytes of a short `msgen bench` run.
    static func bench(_ model: String) throws -> (rss: Int, dtype: String, cache: Int) {
        let r = try CLI.run(["bench", "-m", model, "-c", "16", "--repetitions", "1", "--decode-tokens", "2", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let o = try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        let cache = ((o["decode"] as! [[String: Any]])[0]["cache_bytes"] as! NSNumber).intValue
        return ((o["peak_rss_bytes"] as! NSNumber).intValue, o["weight_dtype"] as! String, cache)
    }

    @Test func q8ModelStaysQ8InMemory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-memory-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let f32 = dir.appendingPathComponent("f32.msz").path, q8 = dir.appendingPathComponent("q8.msz").path
        try Self.writeModel(f32)
        let c = try CLI.run(["convert", f32, "-o", q8, "--dtype", "q8"])
        #expect(c.status == 0, "\(c.stderr)")
        let raw = try MSZFile(path: q8).tensors.reduce(0) { $0 + $1.rawBytes }
        let wide = try MSZFile(path: f32).tensors.reduce(0) { $0 + $1.rawBytes }
        #expect(raw > 14_000_000 && wide > 3 * raw)

        let small = try Self.bench(q8)
        #expect(small.dtype == "q8")
        let bound = Int(1.3 * Double(raw)) + small.cache + Self.runtimeOverhead
        #expect(small.rss <= bound, "peak RSS \(small.rss) for \(raw) raw q8 bytes (bound \(bound))")
        // The same model in f32 takes its f32 bytes: the bound above would not hold for it.
        let big = try Self.bench(f32)
        #expect(big.dtype == "f32" && big.rss > bound, "f32 peak RSS \(big.rss)")
    }
}
