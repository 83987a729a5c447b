import Foundation
import MSFormat
import MSModels
import MSTokenizer
import Testing

@testable import MSGen

/// The multi-scale decoders (Sources/MSModels/README.md) through the generator and the msgen binary:
/// convert, inspect, generate (stopping with "context_full"), perplexity and bench work
/// on converted fixtures unchanged, and a config whose sizes do not divide is refused at
/// convert with one line.
struct MultiScaleCLITests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let names = ["topdown_k2_s3_untied_gelu", "bottomup_k4_s2_tied_gelu_agg2"]
    static let dir: URL = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-multiscale-\(getpid())")
        try! FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d
    }()

    static func golden(_ name: String) -> String { fixtures.appendingPathComponent("golden/\(name)").path }

    @Test(arguments: names)
    func generationStopsWhenTheContextIsFull(_ name: String) throws {
        let ckpt = try Checkpoint.load(path: Self.golden(name))
        let model = try Architectures.languageModel(
            config: ckpt.configJSON, tensors: Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) }))
        let g = Generator(model: model, tokenizer: try BPETokenizer(json: ckpt.tokenizerJSON!))
        var o = GenerationOptions(); o.maxTokens = 1000; o.ignoreEOS = true; o.sampler.seed = 3
        let r = try collect(g, "In", o)
        #expect(r.summary.stopReason == .contextFull)
        #expect(r.summary.promptTokens + r.summary.generatedTokens == model.config.context + 1)
    }

    @Test(arguments: names)
    func everyCommandRunsOnAConvertedFixture(_ name: String) throws {
        let out = Self.dir.appendingPathComponent("\(name).msz").path
        let c = try CLI.run(["convert", Self.golden(name), "-o", out, "--dtype", "f16"])
        #expect(c.status == 0, "\(c.stderr)")
        let architecture = name.hasPrefix("topdown") ? "top-down-decoder" : "bottom-up-decoder"

        let i = try CLI.run(["inspect", "--json", "--verify", out])
        #expect(i.status == 0, "\(i.stderr)")
        let info = try JSONSerialization.jsonObject(with: i.stdout) as! [String: Any]
        #expect(info["architecture"] as? String == architecture)
        let names = (info["tensors"] as! [[String: Any]]).compactMap { $0["name"] as? String }
        #expect(names.contains("scales.1.pos.weight") && names.contains("scales.0.layers.0.attn.q_proj.weight"))

        let g = try CLI.run(["generate", "--model", out, "--json", "--ignore-eos", "--max-tokens", "1000", "--seed", "2", "In the"])
        #expect(g.status == 0, "\(g.stderr)")
        let done = String(decoding: g.stdout, as: UTF8.self).split(separator: "\n").last.map {
            try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(done?["stop_reason"] as? String == "context_full")

        let psalm = Self.fixtures.appendingPathComponent("perplexity/psalm.txt").path
        let p = try CLI.run(["perplexity", "--model", out, "--json", psalm])
        #expect(p.status == 0, "\(p.stderr)")
        let ppl = try JSONSerialization.jsonObject(with: p.stdout) as! [String: Any]
        #expect((ppl["tokens"] as? Int ?? 0) > 1000 && (ppl["ppl"] as? Double ?? 0) > 1)

        let b = try CLI.run(["bench", "--model", out, "--context", "8", "--json"])
        #expect(b.status == 0, "\(b.stderr)")
        let bench = try JSONSerialization.jsonObject(with: b.stdout) as! [String: Any]
        #expect(bench["architecture"] as? String == architecture && (bench["prefill"] as? [Any])?.count == 1)
    }

    @Test func convertRefusesSizesThatDoNotDivide() throws {
        let bad = Self.dir.appendingPathComponent("bad")
        try? FileManager.default.removeItem(at: bad)
        try FileManager.default.copyItem(atPath: Self.golden("topdown_k2_s3_untied_gelu"), toPath: bad.path)
        let configURL = bad.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config["max_positions"] = 18
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        let r = try CLI.run(["convert", bad.path, "-o", Self.dir.appendingPathComponent("bad.msz").path])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("config 'max_positions' 18 is not a multiple of pool_factor^(scales−1) = 2^2"), "\(r.stderr)")
    }

    /// A retina model has no context limit: `msgen perplexity` scores a file in one pass
    /// through the bounded cache unless --context asks for windows.
    @Test func retinaPerplexityStreamsByDefault() throws {
        let out = Self.dir.appendingPathComponent("retina.msz").path
        let c = try CLI.run(["convert", Self.golden("retina_a2_m2_k2_w2_shared_untied"), "-o", out])
        #expect(c.status == 0, "\(c.stderr)")
        let psalm = Self.fixtures.appendingPathComponent("perplexity/psalm.txt").path
        func score(_ extra: [String]) throws -> [String: Any] {
            let r = try CLI.run(["perplexity", "--model", out, "--json"] + extra + [psalm])
            #expect(r.status == 0, "\(r.stderr)")
            return try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        }
        let byDefault = try score([]), streamed = try score(["--stream"]), windows = try score(["--context", "16"])
        #expect(byDefault["stream"] as? Bool == true && windows["stream"] as? Bool == false)
        let ppl = byDefault["ppl"] as? Double ?? .nan
        #expect(ppl == streamed["ppl"] as? Double, "the default is the one pass")
        // Windows of 16 tokens see less of the past than the one pass: a different score.
        #expect(abs(ppl - (windows["ppl"] as? Double ?? .nan)) > 1e-6 * ppl)
        #expect((byDefault["tokens"] as? Int ?? 0) > 1000)
    }
}
