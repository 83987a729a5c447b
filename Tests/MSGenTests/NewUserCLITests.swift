import Foundation
import MSGenTestSupport
import Testing

/// Issue 12's defects, tried as a new user coming from llama.cpp would: exit codes, write
/// errors, Ctrl-C, finding the bundled model, typos, short flags, logprobs.
struct NewUserCLITests {
    static let dir: URL = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("msgen-user-\(getpid())")
        try! FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        try! Data("In the beginning God created the heaven and the earth.\n".utf8).write(to: d.appendingPathComponent("good.txt"))
        try! Data("And the earth was without form, and void.\n".utf8).write(to: d.appendingPathComponent("other.txt"))
        // Long enough that scoring it takes far longer than stopping does.
        try! Data(String(repeating: "And God said, Let there be light: and there was light. ", count: 4000).utf8)
            .write(to: d.appendingPathComponent("long.txt"))
        return d
    }()
    static func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
    static var m: String { CLI.models.decoder }

    static func json(_ d: Data) -> [String: Any] { (try? JSONSerialization.jsonObject(with: d)) as? [String: Any] ?? [:] }
    static func jsonLines(_ d: Data) -> [[String: Any]] {
        String(decoding: d, as: UTF8.self).split(separator: "\n").map { json(Data($0.utf8)) }
    }
    static func text(_ r: CLI.Result) -> String { String(decoding: r.stdout, as: UTF8.self) }
    /// stderr less the informational lines of generate (seed, timings) and bench (depths).
    static func errors(_ r: CLI.Result) -> [Substring] {
        r.stderr.split(separator: "\n").filter { !$0.hasPrefix("seed ") && !$0.hasPrefix("prompt ") && !$0.hasPrefix("depth ") }
    }

    // MARK: 5. perplexity never prints nan

    @Test func perplexityOfABrokenModelIsAnErrorNotNan() throws {
        for extra in [[], ["--json"], ["--stream"]] {
            let r = try CLI.run(["perplexity", "-m", CLI.models.nan] + extra + [Self.path("good.txt")])
            #expect(r.status != 0, "\(extra)")
            #expect(r.stdout.isEmpty, "\(extra): \(Self.text(r))")  // no result at all, so no "ppl nan"
            #expect(Self.errors(r).count == 1 && r.stderr.contains("not finite"), "\(extra): \(r.stderr)")
        }
    }

    // MARK: 6. write errors

    static let writers: [String] = [
        "\"$MSGEN\" generate -m \(m) -n 4 -s 1 hello",
        "\"$MSGEN\" tokenize -m \(m) hello",
        "\"$MSGEN\" perplexity -m \(m) \(path("good.txt"))",
        "\"$MSGEN\" classify -m \(CLI.models.encoder) hello",
        "\"$MSGEN\" inspect \(m)",
        "\"$MSGEN\" bench -m \(m) -c 8 --repetitions 1 --decode-tokens 1",
    ]

    @Test(arguments: writers)
    func aFullOrClosedStdoutIsAnError(command: String) throws {
        for redirect in [">/dev/full", ">&-"] {
            let r = try CLI.shell(command + " " + redirect)
            #expect(r.status == 1, "\(command) \(redirect): \(r.status)")
            #expect(
                Self.errors(r) == ["cannot write to standard output: " + (redirect == ">&-" ? "Bad file descriptor" : "No space left on device")],
                "\(command) \(redirect): \(r.stderr)")
        }
        // A reader that goes away is no error.
        let piped = try CLI.shell("{ " + command + "; echo \"msgen status $?\" >&2; } | head -c 1 >/dev/null")
        #expect(Self.errors(piped) == ["msgen status 0"], "\(command): \(piped.stderr)")
    }

    // MARK: 7. Ctrl-C

    @Test func ctrlCStopsPerplexityWindowsAndStream() throws {
        for mode in [["-c", "16"], ["--stream"]] {
            let plain = try CLI.run(["perplexity", "-m", Self.m] + mode + [Self.path("long.txt")], interruptOnceHandled: true)
            #expect(plain.status == 130, "\(mode): \(plain.stderr)")
            #expect(!plain.stderr.contains("ExitCode"), "\(plain.stderr)")
            let json = try CLI.run(["perplexity", "-m", Self.m, "--json"] + mode + [Self.path("long.txt")], interruptOnceHandled: true)
            #expect(json.status == 130)
            #expect(Self.json(json.stdout)["interrupted"] as? Bool == true, "\(Self.text(json))")
        }
    }

    @Test func ctrlCStopsBench() throws {
        // CST decodes past its context: a million tokens deep would take hours.
        let r = try CLI.run(["bench", "-m", Self.m, "--json", "-c", "1000000", "--repetitions", "1"], interruptOnceHandled: true)
        #expect(r.status == 130 && !r.stderr.contains("ExitCode"), "\(r.stderr)")
        #expect(Self.json(r.stdout)["interrupted"] as? Bool == true)
    }

    @Test func ctrlCEndsGenerateJSONWithACancelledEvent() throws {
        let r = try CLI.run(["-m", Self.m, "--json", "-n", "100000000", "--ignore-eos", "x"], signalAfter: 2000)
        #expect(r.status == 130 && !r.stderr.contains("ExitCode"))
        #expect(Self.jsonLines(r.stdout).last?["stop_reason"] as? String == "cancelled")
    }

    @Test func ctrlCWhileClassifyingIsQuiet() throws {
        let many = Data(String(repeating: "a fortune line\n", count: 200_000).utf8)
        let r = try CLI.run(["classify", "-m", CLI.models.encoder], stdin: many, interruptOnceHandled: true)
        #expect(r.status == 130 && !r.stderr.contains("ExitCode"), "\(r.stderr)")
    }

    // MARK: 8. the bundled model, from PATH and through a symlink

    @Test func bundledModelIsFoundFromPATHThroughASymlink() throws {
        let bin = Self.dir.appendingPathComponent("bin")
        try? FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: bin.appendingPathComponent("msgen"))
        try FileManager.default.createSymbolicLink(atPath: bin.appendingPathComponent("msgen").path, withDestinationPath: CLI.binary)
        var env = ProcessInfo.processInfo.environment
        env["MSGEN_MODEL"] = nil; env["MSGEN_CLASSIFIER"] = nil
        env["PATH"] = bin.path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        for command in ["msgen -n 2 -s 1 hi", "msgen classify 'a wise man'"] {
            let r = try CLI.run(["-c", command], environment: env, directory: "/", executable: "/bin/sh")
            #expect(r.status == 0 && !r.stdout.isEmpty, "\(command): \(r.stderr)")
        }
    }

    // MARK: 9. mistyped subcommands

    @Test func mistypedSubcommandIsRefusedAndDashDashForcesAPrompt() throws {
        for (typo, meant) in [("perplexty", "perplexity"), ("tokenise", "tokenize"), ("clasify", "classify"), ("bnech", "bench")] {
            let r = try CLI.run([typo, Self.path("good.txt")], environment: ["MSGEN_MODEL": Self.m])
            #expect(r.status != 0 && r.stdout.isEmpty, "\(typo)")
            #expect(r.stderr.contains("did you mean \(meant)?") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        }
        let forced = try CLI.run(["--", "perplexty"], environment: ["MSGEN_MODEL": Self.m])
        #expect(forced.status == 0 && Self.text(forced).hasPrefix("perplexty"), "\(forced.stderr)")
        // A word that is no near miss is a prompt as before.
        let prompt = try CLI.run(["-n", "1", "beginning"], environment: ["MSGEN_MODEL": Self.m])
        #expect(prompt.status == 0 && Self.text(prompt).hasPrefix("beginning"))
    }

    // MARK: 10. "-" among prompts reads standard input

    @Test func dashAmongPromptsReadsStandardInput() throws {
        let r = try CLI.run(["-m", Self.m, "-n", "1", "-s", "1", "first", "-"], stdin: Data("from stdin\n".utf8))
        #expect(r.status == 0)
        let blocks = Self.text(r).components(separatedBy: "\n\n")
        #expect(blocks.count == 2 && blocks[0].hasPrefix("first") && blocks[1].hasPrefix("from stdin"), "\(Self.text(r))")
    }

    // MARK: 13. messages

    @Test func seedMinusOneAndUsageErrorsPointToTheSubcommandHelp() throws {
        let random = try CLI.run(["-m", Self.m, "-n", "1", "--seed", "-1", "hi"])
        #expect(random.status == 0 && random.stderr.contains("seed "), "\(random.stderr)")
        let bad = try CLI.run(["-m", Self.m, "--seed", "-5", "hi"])
        #expect(bad.status != 0 && bad.stderr.contains("-1 for a random") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
        let usage = try CLI.run(["perplexity", "--bogus", Self.path("good.txt")])
        #expect(usage.status != 0 && usage.stderr.contains("'msgen perplexity --help'"), "\(usage.stderr)")
        let generate = try CLI.run(["--bogus", "hi"])
        #expect(generate.stderr.contains("'msgen generate --help'"), "\(generate.stderr)")
    }

    @Test func threadsMustBePositiveEverywhere() throws {
        for args in [
            ["-t", "0", "hi"], ["bench", "--threads", "0"], ["perplexity", "-t", "0", Self.path("good.txt")],
            ["classify", "--threads", "0", "x"], ["tokenize", "-t", "-1", "x"],
        ] {
            let r = try CLI.run(args)
            #expect(r.status != 0 && r.stderr.contains("--threads must be ≥ 1"), "\(args): \(r.stderr)")
        }
    }

    // MARK: 14. llama.cpp's short flags

    @Test func shortFlagsMeanTheLongOnes() throws {
        let long = try CLI.run(["generate", "--model", Self.m, "--max-tokens", "6", "--seed", "3", "--threads", "1", "--stop", "zz", "In the"])
        let short = try CLI.run(["-m", Self.m, "-n", "6", "-s", "3", "-t", "1", "-r", "zz", "-p", "In the"])
        #expect(long.status == 0 && short.stdout == long.stdout)
        try Data("In the\n".utf8).write(to: Self.dir.appendingPathComponent("prompt.txt"))
        for flag in ["-f", "--file"] {
            #expect(try CLI.run(["-m", Self.m, "-n", "6", "-s", "3", flag, Self.path("prompt.txt")]).stdout == long.stdout)
        }
        let escaped = try CLI.run(["-m", Self.m, "-n", "0", "-e", "-p", "a\\nb"])
        #expect(Self.text(escaped) == "a\nb\n")
        let c = try CLI.run(["perplexity", "-m", Self.m, "--json", "-c", "8", Self.path("good.txt")])
        #expect(Self.json(c.stdout)["context"] as? Int == 8)
    }

    // MARK: 15. logprobs

    @Test func generateJSONReportsLogprobsAndTheTopN() throws {
        let r = try CLI.run(["-m", Self.m, "--json", "--logprobs", "3", "-n", "5", "--temperature", "0", "--ignore-eos", "In the"])
        #expect(r.status == 0, "\(r.stderr)")
        let tokens = Self.jsonLines(r.stdout).filter { $0["event"] as? String == "token" }
        #expect(tokens.count == 5)
        for t in tokens {
            let top = t["top"] as? [[String: Any]] ?? []
            #expect(top.count == 3)
            let lps = top.compactMap { $0["logprob"] as? Double }
            #expect(lps == lps.sorted(by: >) && lps.allSatisfy { $0 <= 0 } && lps.reduce(0) { $0 + exp($1) } <= 1 + 1e-5)
            // Greedy: the token taken is the most likely one.
            #expect(top.first?["id"] as? Int == t["id"] as? Int && top.first?["logprob"] as? Double == t["logprob"] as? Double)
        }
        let noJSON = try CLI.run(["-m", Self.m, "--logprobs", "2", "hi"])
        #expect(noJSON.status != 0 && noJSON.stderr.contains("--logprobs needs --json"))
    }

    @Test func perplexityPerTokenRecordsCarryTheirText() throws {
        let r = try CLI.run(["perplexity", "-m", Self.m, "--json", "--per-token", Self.path("good.txt")])
        let records = Self.json(r.stdout)["per_token"] as? [[String: Any]] ?? []
        let text = records.compactMap { $0["text"] as? String }.joined()
        #expect(records.count > 2 && records.count == records.compactMap { $0["text"] as? String }.count)
        // Scoring starts at the second token: the texts are the file less its first token.
        let first = (Self.json(try CLI.run(["tokenize", "-m", Self.m, "--json", "In the beginning"]).stdout)["pieces"] as? [String])?.first ?? "?"
        #expect(first + text == "In the beginning God created the heaven and the earth.\n")
    }

    // MARK: 16. perplexity: standard input, and files that cannot be read

    @Test func perplexityReadsStandardInputAndScoresTheFilesItCan() throws {
        let file = try CLI.run(["perplexity", "-m", Self.m, "--json", Self.path("good.txt")])
        let stdin = try CLI.run(
            ["perplexity", "-m", Self.m, "--json", "-"], stdin: try Data(contentsOf: Self.dir.appendingPathComponent("good.txt")))
        #expect(stdin.status == 0 && Self.json(stdin.stdout)["nll"] as? Double == Self.json(file.stdout)["nll"] as? Double)

        let r = try CLI.run(["perplexity", "-m", Self.m, Self.path("good.txt"), Self.path("missing.txt"), Self.path("other.txt")])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n") == ["\(Self.path("missing.txt")): no such file"], "\(r.stderr)")
        let lines = Self.text(r).split(separator: "\n")
        #expect(
            lines.count == 3 && lines[0].hasPrefix(Self.path("good.txt")) && lines[1].hasPrefix(Self.path("other.txt"))
                && lines[2].hasPrefix("total"), "\(Self.text(r))")
    }

    // MARK: 17. small things

    @Test func benchOnAShortContextMeasuresUpToIt() throws {
        let r = try CLI.run(["bench", "-m", CLI.models.baseline, "--json", "-c", "8192", "--repetitions", "1", "--decode-tokens", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        let o = Self.json(r.stdout), context = o["context"] as? Int ?? 0
        let decode = o["decode"] as? [[String: Any]] ?? []
        #expect(decode.count == 1 && (decode.first?["depth"] as? Int ?? .max) + 2 <= context && context > 2, "\(Self.text(r))")
    }

    @Test func perTokenWithoutJSONIsAnError() throws {
        let r = try CLI.run(["perplexity", "-m", Self.m, "--per-token", Self.path("good.txt")])
        #expect(r.status != 0 && r.stderr.contains("--per-token needs --json") && r.stdout.isEmpty)
    }

    @Test func whitespaceOnlyLinesAreSkippedWithANote() throws {
        let input = Data("first\n   \n\t\nsecond\n".utf8)
        let classify = try CLI.run(["classify", "-m", CLI.models.encoder], stdin: input)
        #expect(classify.status == 0 && Self.text(classify).split(separator: "\n").count == 2)
        #expect(classify.stderr.contains("skipped 2 whitespace-only lines"), "\(classify.stderr)")
        let generate = try CLI.run(["-m", Self.m, "--lines", "--json", "-n", "1"], stdin: input)
        #expect(Self.jsonLines(generate.stdout).filter { $0["event"] as? String == "done" }.count == 2)
        #expect(generate.stderr.contains("skipped 2 whitespace-only lines"))
    }

    @Test func tokenizeDropsTheFinalNewlineOfStandardInput() throws {
        let piped = try CLI.run(["tokenize", "-m", Self.m, "--json"], stdin: Data("hi\n".utf8))
        let argument = try CLI.run(["tokenize", "-m", Self.m, "--json", "hi"])
        #expect(piped.status == 0 && piped.stdout == argument.stdout)
    }

    @Test func stopKeepsJSONTokenTextsTheTokensOwn() throws {
        let free = Self.jsonLines(try CLI.run(["-m", Self.m, "--json", "-n", "40", "-s", "9", "--ignore-eos", "And"]).stdout)
            .filter { $0["event"] as? String == "token" }
        let text = free.compactMap { $0["text"] as? String }.joined()
        guard text.count > 12 else { Issue.record("too little output to test with: \(text)"); return }
        let stop = String(text.dropFirst(8).prefix(3))
        let cut = Self.jsonLines(try CLI.run(["-m", Self.m, "--json", "-n", "40", "-s", "9", "--ignore-eos", "--stop", stop, "And"]).stdout)
        #expect(cut.last?["stop_reason"] as? String == "stop")
        let cutTokens = cut.filter { $0["event"] as? String == "token" }
        // Same seed, same tokens: each event's text is what that token's event says without --stop.
        #expect(!cutTokens.isEmpty && cutTokens.count < free.count)
        for (a, b) in zip(cutTokens, free) { #expect(a["id"] as? Int == b["id"] as? Int && a["text"] as? String == b["text"] as? String) }
    }
}
