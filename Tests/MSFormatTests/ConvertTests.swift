import Foundation
import MSModels
import Testing

@testable import MSFormat

/// `msgen convert` on a real checkpoint, and its validation errors.
struct ConvertTests {
    let dir = TempDir()

    /// A copy of the tiny CST checkpoint with its config edited.
    func checkpoint(_ edit: (inout [String: Any]) -> Void = { _ in }) throws -> String {
        let src = Fixtures.path("format/tiny-cst")
        let dst = dir.path("ckpt-\(UUID().uuidString)")
        try FileManager.default.copyItem(atPath: src, toPath: dst)
        let configURL = URL(fileURLWithPath: dst + "/config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        return dst
    }

    func validationError(_ edit: (inout [String: Any]) -> Void) throws -> String {
        do { try Checkpoint.load(path: try checkpoint(edit)).validate(); return "no error" } catch { return "\(error)" }
    }

    @Test func validCheckpointValidates() throws {
        let c = try Checkpoint.load(path: try checkpoint())
        try c.validate()
        let config = try CSTConfig(ConfigReader(c.configJSON))
        #expect(config.common.architecture == "cst-decoder" && config.leftExtension == 4 && config.common.context == 16)
        #expect(c.tokenizerJSON != nil)
    }

    @Test func missingUnexpectedAndMisShaped() throws {
        #expect(try validationError { $0["shared_local_global"] = false }.contains("missing layers.0.attn.gq_proj.weight [32, 32]"))
        #expect(try validationError { $0["tie_embeddings"] = true }.contains("unexpected lm_head.weight"))
        #expect(try validationError { $0["d_ff"] = 48 }.contains("layers.0.mlp.fc1.weight has shape [64, 32], config needs [48, 32]"))
        #expect(try validationError { $0["n_layers"] = 2 }.contains("missing layers.1.norm1.weight"))
    }

    @Test func badConfigs() throws {
        #expect(try validationError { $0["architecture"] = "mamba" }.contains("unknown architecture 'mamba'"))
        #expect(try validationError { $0["extension_ratio"] = 4 }.contains("extension_ratio"))
        #expect(
            try validationError {
                $0["slice_length"] = 3; $0["extension_ratio"] = 2
            }.contains("not an integer"))
        #expect(try validationError { $0["n_heads"] = 3 }.contains("not divisible"))
        #expect(try validationError { $0.removeValue(forKey: "vocab_size") }.contains("missing 'vocab_size'"))
        #expect(try validationError { $0["vocab_size"] = 100 }.contains("vocab_size is 100"))
    }

    @Test(arguments: ["f32", "f16", "bf16", "q8"])
    func cliConvertsAndInspects(dtype: String) throws {
        let out = dir.path("m-\(dtype).msz")
        let r = try CLI.run(["convert", Fixtures.path("format/tiny-cst"), "-o", out, "--dtype", dtype])
        #expect(r.status == 0, "\(r.stderr)")
        let i = try CLI.run(["inspect", "--json", "--verify", out])
        #expect(i.status == 0, "\(i.stderr)")
        let info = try JSONSerialization.jsonObject(with: i.stdout) as! [String: Any]
        #expect(info["architecture"] as? String == "cst-decoder")
        #expect((info["config"] as? [String: Any])?["note"] as? String == "unknown keys are kept")
        let tensors = info["tensors"] as! [[String: Any]]
        #expect(tensors.count == 22)
        let embed = tensors.first { $0["name"] as? String == "embed.weight" }!
        #expect(embed["dtype"] as? String == dtype)
        let norm = tensors.first { $0["name"] as? String == "norm_f.weight" }!
        #expect(norm["dtype"] as? String == (dtype == "q8" ? "f32" : dtype))
        // In memory the matrices keep their stored dtype: every one of them, in its raw bytes.
        let resident = info["resident_bytes"] as! [String: Int]
        let matrices = tensors.filter {
            ($0["shape"] as! [Int]).count == 2 && ($0["name"] as! String).hasPrefix("layers.") || $0["name"] as? String == "embed.weight"
        }
        #expect(resident[dtype] ?? 0 >= matrices.reduce(0) { $0 + ($1["raw_bytes"] as! Int) }, "\(resident)")
        // The stored weights equal the checkpoint's, converted.
        let source = Dictionary(
            uniqueKeysWithValues: try Safetensors.read(path: Fixtures.path("format/tiny-cst/model.safetensors")).map { ($0.name, $0.tensor) })
        let loaded = try MSZFile(path: out).load()
        for (name, t) in loaded {
            #expect(t.floats() == source[name]!.converted(to: t.dtype).floats(), "\(name)")
        }
    }

    @Test func failedConvertLeavesNothingBehind() throws {
        let ckpt = try checkpoint { $0["d_ff"] = 48 }
        let out = dir.path("out/never.msz")
        try FileManager.default.createDirectory(atPath: dir.path("out"), withIntermediateDirectories: true)
        let r = try CLI.run(["convert", ckpt, "-o", out])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path("out")).isEmpty)
    }

    @Test func maliciousCheckpointViaCLI() throws {
        try? FileManager.default.removeItem(atPath: "/tmp/msgen-pwned")
        let r = try CLI.run([
            "convert", Fixtures.path("format/evil.pt"), "--config", Fixtures.path("format/tiny-cst/config.json"),
            "-o", dir.path("evil.msz"),
        ])
        #expect(r.status != 0 && r.stderr.contains("refusing to load"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/msgen-pwned"))
        #expect(!FileManager.default.fileExists(atPath: dir.path("evil.msz")))
    }
}
