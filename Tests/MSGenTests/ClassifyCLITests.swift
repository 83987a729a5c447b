import Foundation
import MSFormat
import Testing

/// `msgen classify` as a user runs it, on golden encoder fixtures converted with
/// `msgen convert`.
struct ClassifyCLITests {
    /// A converted fixture, the sentence its golden probabilities are for (the `text`
    /// of tools/msgen_tools/make_fixtures.py, listed in the fixtures' README) and those.
    struct Model { let path: String; let sentence: String; let labels: [String]; let probs: [Float] }

    static let models: [String: Model] = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-classify-\(getpid())")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sentences = [
            "mstrans_fixed_scales": "The LORD is my shepherd; I shall not want.",
            "mstrans_nk_scales": "And God saw the light, that it was good.",
        ]
        return sentences.reduce(into: [:]) { out, entry in
            let (name, sentence) = entry
            let fixture = CLI.fixtures.appendingPathComponent(name).path
            let path = dir.appendingPathComponent(name + ".msz").path
            let r = try! CLI.run(["convert", fixture, "-o", path])
            precondition(r.status == 0, r.stderr)
            let golden = Dictionary(uniqueKeysWithValues: try! Safetensors.read(path: fixture + "/golden.safetensors").map { ($0.name, $0.tensor) })
            out[name] = Model(path: path, sentence: sentence, labels: ["negative", "neutral", "positive"], probs: golden["probs"]!.floats())
        }
    }()
    static let fixed = models["mstrans_fixed_scales"]!

    static func lines(_ r: CLI.Result) -> [String] { String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init) }
    static func objects(_ r: CLI.Result) -> [[String: Any]] {
        lines(r).map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    func expectOneLineError(_ r: CLI.Result, _ text: String) {
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(text), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
    }

    @Test func readmeNamesTheSentences() throws {
        let readme = try String(contentsOf: CLI.fixtures.appendingPathComponent("README.md"), encoding: .utf8)
        for m in Self.models.values { #expect(readme.contains("'\(m.sentence)'")) }
    }

    /// --json: the label is the most likely one and the probabilities are the reference's.
    @Test(arguments: ["mstrans_fixed_scales", "mstrans_nk_scales"])
    func jsonMatchesTheReference(_ name: String) throws {
        let m = Self.models[name]!
        let r = try CLI.run(["classify", "--model", m.path, "--json", m.sentence])
        #expect(r.status == 0, "\(r.stderr)")
        let objects = Self.objects(r)
        try #require(objects.count == 1)
        let probs = try #require(objects[0]["probs"] as? [String: Double])
        #expect(Set(probs.keys) == Set(m.labels))
        for (label, p) in zip(m.labels, m.probs) { #expect(abs(probs[label]! - Double(p)) < 1e-4, "\(label)") }
        let best = m.labels[m.probs.indices.max { m.probs[$0] < m.probs[$1] }!]
        #expect(objects[0]["label"] as? String == best)
        #expect(objects[0]["truncated"] == nil)
        #expect(r.stderr.isEmpty)
    }

    /// Plain text: label, probability and the text, tab-separated; --top K gives K pairs.
    @Test func plainTextAndTop() throws {
        let m = Self.fixed
        let ranked = m.probs.indices.sorted { m.probs[$0] > m.probs[$1] }
        let r = try CLI.run(["classify", "--model", m.path, m.sentence])
        #expect(r.status == 0)
        let fields = try #require(Self.lines(r).first).split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        #expect(fields.count == 3)
        #expect(fields[0] == m.labels[ranked[0]])
        #expect(abs(Float(fields[1])! - m.probs[ranked[0]]) < 1e-4)
        #expect(fields[2] == m.sentence)

        let top = try CLI.run(["classify", "--model", m.path, "--top", "3", m.sentence])
        let all = Self.lines(top)[0].split(separator: "\t").map(String.init)
        #expect(all.count == 7 && all[6] == m.sentence)
        for (k, i) in ranked.enumerated() {
            #expect(all[2 * k] == m.labels[i])
            #expect(abs(Float(all[2 * k + 1])! - m.probs[i]) < 1e-4)
        }
        // More than there are labels is all of them.
        #expect(Self.lines(try CLI.run(["classify", "--model", m.path, "--top", "9", m.sentence]))[0].split(separator: "\t").count == 7)
    }

    /// Standard input: one input per non-empty line, in order; arguments: one each.
    @Test func stdinLinesAndArguments() throws {
        let m = Self.fixed
        let r = try CLI.run(["classify", "--model", m.path, "--json"], stdin: Data("\(m.sentence)\n\nIn the beginning\r\n".utf8))
        #expect(r.status == 0, "\(r.stderr)")
        let fromStdin = Self.objects(r)
        #expect(fromStdin.count == 2)
        let args = Self.objects(try CLI.run(["classify", "--model", m.path, "--json", m.sentence, "In the beginning"]))
        #expect(args.map { $0["label"] as? String } == fromStdin.map { $0["label"] as? String })
        #expect(abs((fromStdin[0]["probs"] as! [String: Double])["neutral"]! - Double(m.probs[1])) < 1e-4)
        let dash = try CLI.run(["classify", "--model", m.path, "-"], stdin: Data("In the beginning\n".utf8))
        #expect(Self.lines(dash).count == 1 && Self.lines(dash)[0].hasSuffix("\tIn the beginning"))
    }

    /// Past max_length: the beginning is used, a note per truncated input goes to stderr,
    /// and --json says "truncated": true.
    @Test func truncationIsNoted() throws {
        let m = Self.fixed
        let long = Array(repeating: "And the evening and the morning were the first day.", count: 8).joined(separator: " ")
        let r = try CLI.run(["classify", "--model", m.path, "--json", long, m.sentence, long])
        #expect(r.status == 0)
        let objects = Self.objects(r)
        #expect(objects.map { $0["truncated"] as? Bool } == [true, nil, true])
        let notes = r.stderr.split(separator: "\n")
        #expect(notes.count == 2 && notes.allSatisfy { $0.contains("truncated") && $0.contains("to 47 tokens") }, "\(r.stderr)")
        #expect(notes.first?.contains("input 1") == true && notes.last?.contains("input 3") == true)
        // The truncated text is classified as its first 47 tokens are.
        let plain = try CLI.run(["classify", "--model", m.path, long])
        #expect(plain.status == 0 && plain.stderr.contains("truncated"))
    }

    @Test func badInputIsOneClearLine() throws {
        let m = Self.fixed.path
        expectOneLineError(try CLI.run(["classify", "--model", m, ""]), "empty")
        expectOneLineError(try CLI.run(["classify", "--model", m, "fine", ""]), "input 2 is empty")
        expectOneLineError(try CLI.run(["classify", "--model", m], stdin: Data()), "no lines")
        expectOneLineError(try CLI.run(["classify", "--model", m], stdin: Data("\n\r\n\n".utf8)), "no lines")
        expectOneLineError(try CLI.run(["classify", "--model", m], stdin: Data([0x66, 0xFF, 0xFE, 0x0A])), "not valid UTF-8")
        expectOneLineError(try CLI.run(["classify", "--model", m, "--top", "0", "x"]), "--top")
        expectOneLineError(try CLI.run(["classify", "--model", "/nonexistent.msz", "x"]), "cannot open")
        // A language model is not a classifier.
        expectOneLineError(try CLI.run(["classify", "--model", CLI.models.decoder, "hello"]), "cst-decoder")
        expectOneLineError(try CLI.run(["classify", "--model", CLI.models.decoder, "hello"]), "ms-trans-encoder")
    }

    /// Without --model the bundled classifier (models/mstrans-fortunes.msz) is used: eight
    /// fortune categories, and a programmer's joke lands in "computers".
    @Test func bundledClassifierIsTheDefault() throws {
        let bundled = CLI.fixtures.appendingPathComponent("../../../models/mstrans-fortunes.msz").standardized.path
        #expect(FileManager.default.fileExists(atPath: bundled))
        let text = "Real programmers don't comment their code. If it was hard to write, it should be hard to understand."
        let r = try CLI.run(["classify", "--json", text])
        #expect(r.status == 0, "\(r.stderr)")
        let o = try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        let probs = o["probs"] as! [String: Double]
        #expect(o["label"] as? String == "computers")
        #expect(Set(probs.keys) == ["computers", "definitions", "men-women", "politics", "science", "songs-poems", "work", "zippy"])
        #expect(abs(probs.values.reduce(0, +) - 1) < 1e-4)
        #expect(try CLI.run(["classify", "--json", "--model", bundled, text]).stdout == r.stdout)
    }
}
