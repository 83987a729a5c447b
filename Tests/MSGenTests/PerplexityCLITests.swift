import Foundation
import Testing

/// `msgen perplexity` from the command line: JSON fields and bad input.
struct PerplexityCLITests {

    static let dir: URL = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-ppl-\(getpid())")
        try! FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        try! Data().write(to: d.appendingPathComponent("empty.txt"))
        try! Data("a".utf8).write(to: d.appendingPathComponent("one.txt"))
        try! Data([0x00, 0xFF, 0x13, 0x80, 0xC3]).write(to: d.appendingPathComponent("binary.bin"))
        try! Data("In the beginning God created the heaven and the earth.\n".utf8).write(to: d.appendingPathComponent("good.txt"))
        return d
    }()
    static func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    @Test func jsonHasTheContractFields() throws {
        let r = try CLI.run(["perplexity", "--model", CLI.models.decoder, "--json", "--per-token", Self.path("good.txt"), Self.path("good.txt")])
        #expect(r.status == 0, "\(r.stderr)")
        let o = try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        for key in ["tokens", "nll", "ppl", "bits_per_byte", "seconds"] { #expect(o[key] != nil, "\(key)") }
        let files = o["files"] as! [[String: Any]]
        #expect(files.count == 2)
        #expect((o["tokens"] as! Int) == 2 * (files[0]["tokens"] as! Int))
        let perToken = o["per_token"] as! [[String: Any]]
        #expect(perToken.count == o["tokens"] as! Int)
        #expect(perToken.first?["pos"] as? Int == 1 && perToken.first?["file"] as? Int == 0 && perToken.last?["file"] as? Int == 1)
        let sum = perToken.reduce(0.0) { $0 - ($1["logprob"] as! Double) }
        #expect(abs(sum - (o["nll"] as! Double)) < 1e-6 * sum)
    }

    @Test func badInput() throws {
        let m = CLI.models.decoder
        let cases: [([String], String)] = [
            ([Self.path("empty.txt")], "is empty"),
            ([Self.path("one.txt")], "at least 2"),
            ([Self.dir.path], "is a directory"),
            ([Self.path("missing.txt")], "no such file"),
            ([Self.path("binary.bin")], "not UTF-8"),
            (["--stride", "40", Self.path("good.txt")], "--stride"),
            (["--context", "1000", Self.path("good.txt")], "--context"),
        ]
        for (args, message) in cases {
            let r = try CLI.run(["perplexity", "--model", m] + args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        let enc = try CLI.run(["perplexity", "--model", CLI.models.encoder, Self.path("good.txt")])
        #expect(enc.status != 0 && enc.stderr.contains("ms-trans-encoder"))
    }
}
