import Foundation
import MSFormat
import MSGenTestSupport
import Testing

/// The msgen binary, run as a user would (shared with the format tests).
typealias CLI = MSGenCLI

/// The models the CLI tests run: converted once per process from the golden fixtures.
extension MSGenCLI {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/golden")
    static let models: (decoder: String, encoder: String, baseline: String, nan: String) = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-cli-\(getpid())")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        func convert(_ fixture: String, _ name: String) -> String {
            let out = dir.appendingPathComponent(name).path
            _ = try! run(["convert", fixtures.appendingPathComponent(fixture).path, "-o", out])
            return out
        }
        return (
            convert("cst_a3_shared_untied_gelutanh_full", "dec.msz"), convert("mstrans_fixed_scales", "enc.msz"),
            convert("transformer_untied_gelutanh", "base.msz"), nanModel(dir.appendingPathComponent("nan.msz").path)
        )
    }()

    /// The CST fixture with every weight NaN, written directly (as a corrupt or diverged
    /// training run would give; convert itself may refuse such weights).
    static func nanModel(_ path: String) -> String {
        let ckpt = try! Checkpoint.load(path: fixtures.appendingPathComponent("cst_a3_shared_untied_gelutanh_full").path)
        for t in ckpt.tensors {
            precondition(t.tensor.dtype == .f32)
            let f = t.tensor.storage.bytes.bindMemory(to: Float.self)
            for j in f.indices { f[j] = .nan }
        }
        try! MSZWriter.write(
            path: path, architecture: ckpt.configJSON.objectValue!["architecture"]!.stringValue!, config: ckpt.configJSON,
            tokenizer: ckpt.tokenizerJSON, tensors: ckpt.tensors, provenance: [:])
        return path
    }
}

/// `msgen generate` as a user runs it: bad input gives one line on stderr and a non-zero
/// exit; a closed stdout or Ctrl-C end it cleanly.
struct GenerateCLITests {
    func expectOneLineError(_ r: CLI.Result, _ text: String) {
        #expect(r.status != 0)
        let lines = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("seed ") }
        #expect(lines.count == 1 && r.stderr.contains(text), "\(r.stderr)")
    }

    @Test func generatesAndReportsTheSeed() throws {
        let r = try CLI.run(["generate", "--model", CLI.models.decoder, "--seed", "5", "--max-tokens", "8", "In the beginning"])
        #expect(r.status == 0)
        #expect(String(decoding: r.stdout, as: UTF8.self).hasPrefix("In the beginning"))
        #expect(r.stderr.contains("seed 5"))
        // The same seed gives the same bytes, with one thread or two.
        let again = try CLI.run(["--model", CLI.models.decoder, "--seed", "5", "--max-tokens", "8", "--threads", "1", "In the beginning"])
        #expect(again.stdout == r.stdout)
    }

    @Test func jsonEventsAndStdinLines() throws {
        let r = try CLI.run(
            ["--model", CLI.models.decoder, "--lines", "--json", "--max-tokens", "3", "--seed", "1"],
            stdin: Data("first\n\nsecond\r\n".utf8))
        #expect(r.status == 0)
        let events = String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map {
            try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(events.count == 8)  // two prompts × (3 tokens + done)
        #expect(events.filter { $0["event"] as? String == "done" }.map { $0["prompt"] as? Int } == [0, 1])
        #expect(events.last?["stop_reason"] as? String == "max_tokens")
        // The CRLF line is the prompt "second", without its line end.
        let tokens = try CLI.run(["tokenize", "--model", CLI.models.decoder, "--json", "second"])
        let ids = (try JSONSerialization.jsonObject(with: tokens.stdout) as! [String: Any])["ids"] as! [Int]
        #expect(events.last?["prompt_tokens"] as? Int == ids.count)
    }

    @Test func badInputIsOneClearLine() throws {
        let m = CLI.models.decoder
        expectOneLineError(try CLI.run(["--model", m], stdin: Data([0x66, 0xFF, 0xFE])), "not valid UTF-8")
        expectOneLineError(try CLI.run(["--model", CLI.models.baseline, String(repeating: "word ", count: 400)]), "longer than the model's context")
        let past = try CLI.run(["--model", m, "-n", "3", String(repeating: "word ", count: 400)])  // CST goes past it
        #expect(past.status == 0 && past.stderr.contains("seed"), "\(past.stderr)")
        expectOneLineError(try CLI.run(["--model", CLI.models.encoder, "hello"]), "ms-trans-encoder")
        expectOneLineError(try CLI.run(["--model", "/nonexistent.msz", "hello"]), "cannot open")
        expectOneLineError(try CLI.run(["--model", m, "--top-p", "0", "x"]), "--top-p")
        expectOneLineError(try CLI.run(["--model", m, "--repeat-last-n=-5", "--repeat-penalty", "1.1", "x"]), "--repeat-last-n must be ≥ 0")
        expectOneLineError(try CLI.run(["--model", m, "--lines"], stdin: Data("\n\n".utf8)), "no lines")
    }

    @Test func emptyPromptStartsFromEndOfText() throws {
        let r = try CLI.run(["--model", CLI.models.decoder, "--max-tokens", "4", "--seed", "2"], stdin: Data())
        #expect(r.status == 0)
    }

    @Test func closedStdoutEndsQuietly() throws {
        let r = try CLI.run(["--model", CLI.models.decoder, "--max-tokens", "100000", "--ignore-eos", "x"], closeStdoutAfter: 1)
        #expect(r.status == 0)
        #expect(!r.stderr.contains("Fatal") && !r.stderr.contains("rror"))
    }

    @Test func ctrlCStopsWithANewlineAnd130() throws {
        let r = try CLI.run(["--model", CLI.models.decoder, "--max-tokens", "100000000", "--ignore-eos", "x"], signalAfter: 200)
        #expect(r.status == 130)
        #expect(r.stdout.last == UInt8(ascii: "\n"))
    }
}
