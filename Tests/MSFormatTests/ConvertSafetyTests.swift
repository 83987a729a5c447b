import Foundation
import Testing

@testable import MSFormat

/// `msgen convert` as a careless user runs it (issue 12): outputs that must not be
/// written, weights and tokenizers that must not be accepted, inputs it must read.
struct ConvertSafetyTests {
    let dir = TempDir()
    let fm = FileManager.default

    func convert(_ args: [String]) throws -> CLI.Result { try CLI.run(["convert"] + args) }

    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// The run failed with one line on stderr containing `message`.
    func expectRefused(_ r: CLI.Result, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status != 0, sourceLocation: sourceLocation)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(message), "\(r.stderr)", sourceLocation: sourceLocation)
    }

    // MARK: where the output goes (item 2)

    @Test func outputThatIsAnInputIsRefused() throws {
        let ckpt = try copyFixture("format/tiny-cst", into: dir)
        let weights = ckpt + "/model.safetensors"
        let original = try bytes(weights)
        try fm.createSymbolicLink(atPath: dir.path("link.safetensors"), withDestinationPath: weights)
        try fm.linkItem(atPath: weights, toPath: dir.path("hard.safetensors"))
        expectRefused(try convert([ckpt, "-o", weights]), "is the input")
        expectRefused(try convert([ckpt, "-o", ckpt + "/config.json"]), "is the input")
        expectRefused(try convert([ckpt, "-o", ckpt + "/tokenizer.json"]), "is the input")
        expectRefused(try convert([ckpt, "-o", dir.path("hard.safetensors")]), "is the input")
        expectRefused(try convert([ckpt, "-o", dir.path("link.safetensors")]), "is a symbolic link")
        #expect(try bytes(weights) == original)
        #expect(try fm.destinationOfSymbolicLink(atPath: dir.path("link.safetensors")) == weights)
        // An .msz input cannot be its own output either.
        let msz = dir.path("m.msz")
        #expect(try convert([ckpt, "-o", msz]).status == 0)
        let stored = try bytes(msz)
        expectRefused(try convert([msz, "-o", msz, "--dtype", "q8"]), "is the input")
        #expect(try bytes(msz) == stored)
    }

    @Test func outputThatIsNotARegularFileIsRefused() throws {
        let ckpt = Fixtures.path("format/tiny-cst")
        expectRefused(try convert([ckpt, "-o", "/dev/full"]), "is a device")
        var st = stat()
        #expect(lstat("/dev/full", &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR)
        expectRefused(try convert([ckpt, "-o", dir.url.path]), "is a directory")
        // A symlink to some other file: rename would replace the link, not write the file.
        try Data("keep".utf8).write(to: URL(fileURLWithPath: dir.path("target")))
        try fm.createSymbolicLink(atPath: dir.path("link.msz"), withDestinationPath: dir.path("target"))
        expectRefused(try convert([ckpt, "-o", dir.path("link.msz")]), "is a symbolic link")
        #expect(try fm.destinationOfSymbolicLink(atPath: dir.path("link.msz")) == dir.path("target"))
        expectRefused(try convert([ckpt, "-o", dir.path("no/such/dir/m.msz")]), "does not exist")
        #expect(try fm.contentsOfDirectory(atPath: dir.url.path).sorted() == ["link.msz", "target"])
    }

    @Test func readOnlyOutputIsKeptAndWritableOneKeepsItsMode() throws {
        let ckpt = Fixtures.path("format/tiny-cst")
        let ro = dir.path("ro.msz"), rw = dir.path("rw.msz")
        try Data("old".utf8).write(to: URL(fileURLWithPath: ro))
        try Data("old".utf8).write(to: URL(fileURLWithPath: rw))
        chmod(ro, 0o444)
        chmod(rw, 0o640)
        expectRefused(try convert([ckpt, "-o", ro]), "is read-only")
        #expect(try bytes(ro) == Data("old".utf8))
        let r = try convert([ckpt, "-o", rw])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try MSZFile(path: rw).tensors.count == 22)
        var st = stat()
        #expect(stat(rw, &st) == 0 && st.st_mode & 0o777 == 0o640)
        #expect(try fm.contentsOfDirectory(atPath: dir.url.path).sorted() == ["ro.msz", "rw.msz"])  // no temp files left
    }

    // MARK: non-finite weights (item 5)

    /// tiny-cst with embed.weight[0, 3] set to `value`.
    func checkpoint(withEmbed value: Float) throws -> String {
        let ckpt = try copyFixture("format/tiny-cst", into: dir)
        let tensors = try Safetensors.read(path: ckpt + "/model.safetensors")
        let embed = tensors.first { $0.name == "embed.weight" }!.tensor
        var v = embed.floats()
        v[3] = value
        try writeSafetensors(replacing("embed.weight", in: tensors, with: Tensor(shape: embed.shape, floats: v)), to: ckpt + "/model.safetensors")
        return ckpt
    }

    @Test(arguments: [Float.nan, .infinity, -.infinity])
    func nonFiniteWeightsNeedAFlag(value: Float) throws {
        let ckpt = try checkpoint(withEmbed: value)
        let out = dir.path("m.msz")
        expectRefused(try convert([ckpt, "-o", out]), "tensor embed.weight has 1 NaN or infinite value (the first at element 3)")
        #expect(!fm.fileExists(atPath: out))
        let r = try convert([ckpt, "-o", out, "--allow-nonfinite"])
        #expect(r.status == 0, "\(r.stderr)")
        let stored = try MSZFile(path: out).load(["embed.weight"])["embed.weight"]!.floats()[3]
        #expect(stored.bitPattern == value.bitPattern || (value.isNaN && stored.isNaN))
    }

    @Test func valuesBeyondHalfRangeAreCaughtAfterConversion() throws {
        let ckpt = try checkpoint(withEmbed: 1e6)
        expectRefused(try convert([ckpt, "-o", dir.path("h.msz"), "--dtype", "f16"]), "once stored as f16")
        #expect(try convert([ckpt, "-o", dir.path("b.msz"), "--dtype", "bf16"]).status == 0)
    }

    // MARK: tokenizers (item 11)

    @Test func tokenizerTheRuntimeCannotBuildIsRefused() throws {
        let ckpt = try copyFixture("format/tiny-cst", into: dir)
        let url = URL(fileURLWithPath: ckpt + "/tokenizer.json")
        var tok = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        tok["normalizer"] = ["type": "Lowercase"]
        try JSONSerialization.data(withJSONObject: tok).write(to: url)
        expectRefused(
            try convert([ckpt, "-o", dir.path("m.msz")]),
            "cannot use the tokenizer of \(ckpt)/tokenizer.json: tokenizer.json has a Lowercase normalizer")
        #expect(!fm.fileExists(atPath: dir.path("m.msz")))
    }

    @Test func gpt2VocabAndMergesBecomeATokenizer() throws {
        let ckpt = try copyFixture("gpt2", into: dir)
        try fm.removeItem(atPath: ckpt + "/tokenizer.json")
        for f in ["vocab.json", "merges.txt"] { try fm.copyItem(atPath: Fixtures.path("format/gpt2-vocab/" + f), toPath: ckpt + "/" + f) }
        let out = dir.path("g.msz")
        let r = try convert([ckpt, "-o", out])
        #expect(r.status == 0 && !r.stderr.contains("no tokenizer"), "\(r.stderr)")
        // The ids msgen gives through the converted model are the ones HF tokenizers gives
        // for vocab.json + merges.txt (recorded in cases.json).
        struct Case: Decodable { let text: String; let ids: [Int] }
        let cases = try JSONDecoder().decode([Case].self, from: bytes(Fixtures.path("format/gpt2-vocab/cases.json")))
        let c = cases.first { $0.text.contains("<|endoftext|>") }!
        let t = try CLI.run(["tokenize", "--json", "--model", out, c.text])
        #expect(t.status == 0, "\(t.stderr)")
        let ids = (try JSONSerialization.jsonObject(with: t.stdout) as? [String: Any])?["ids"] as? [Int]
        #expect(ids == c.ids)
    }

    // MARK: inputs (items 12, 13)

    @Test func shardedCheckpointConvertsLikeTheWholeOne() throws {
        let a = dir.path("whole.msz"), b = dir.path("sharded.msz")
        #expect(try convert([Fixtures.path("format/tiny-cst"), "-o", a]).status == 0)
        let r = try convert([Fixtures.path("format/tiny-cst-sharded"), "-o", b])
        #expect(r.status == 0, "\(r.stderr)")
        let x = try MSZFile(path: a), y = try MSZFile(path: b)
        #expect(x.tensors.map(\.name) == y.tensors.map(\.name))
        let (tx, ty) = (try x.load(), try y.load())
        for (name, t) in tx { #expect(Array(t.storage.bytes) == Array(ty[name]!.storage.bytes), "\(name)") }
        #expect(y.provenance["source_format"] == .string("sharded safetensors"))
    }

    @Test func mszInputIsRequantised() throws {
        let f32 = dir.path("f32.msz"), q8 = dir.path("q8.msz"), direct = dir.path("direct.msz")
        let ckpt = Fixtures.path("format/tiny-cst")
        #expect(try convert([ckpt, "-o", f32]).status == 0)
        let r = try convert([f32, "-o", q8, "--dtype", "q8"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try convert([ckpt, "-o", direct, "--dtype", "q8"]).status == 0)
        let (src, again, once) = (try MSZFile(path: f32), try MSZFile(path: q8), try MSZFile(path: direct))
        // Same config, tokenizer and stored values as converting the checkpoint directly.
        #expect(again.config == src.config && again.tokenizerJSON == src.tokenizerJSON && again.architecture == src.architecture)
        #expect(again.tensors.map(\.dtype) == once.tensors.map(\.dtype) && again.tensors.contains { $0.dtype == .q8 })
        let (ta, tb) = (try again.load(), try once.load())
        for (name, t) in ta { #expect(Array(t.storage.bytes) == Array(tb[name]!.storage.bytes), "\(name)") }
        // The original provenance is kept and the re-conversion recorded beside it.
        #expect(again.provenance["source"] == .string("model.safetensors") && again.provenance["created"] == src.provenance["created"])
        let re = again.provenance["reconverted"]
        #expect(re?["source"] == .string("f32.msz") && re?["source_format"] == .string("msz") && re?["dtype"] == .string("q8"))
        expectRefused(try convert([f32, "-o", dir.path("x.msz"), "--config", ckpt + "/config.json"]), "carries its own config")
    }

    @Test func legacyTorchFileGetsItsOwnMessage() throws {
        let r = try convert([Fixtures.path("format/legacy.pt"), "--config", Fixtures.path("format/tiny-cst/config.json"), "-o", dir.path("m.msz")])
        expectRefused(r, "legacy.pt is a legacy PyTorch file")
        #expect(r.stderr.contains("_use_new_zipfile_serialization=True") && !r.stderr.contains("header length"))
    }

    @Test func crashersAreOneLineErrors() throws {
        // Each of these trapped (SIGILL) or ran out of memory before.
        for f in ["huge_numel.pt", "huge_offset.pt", "huge_stride.pt", "huge_broadcast.pt", "self_ref.pt", "shared_dicts.pt"] {
            let r = try convert([Fixtures.path("format/" + f), "--config", Fixtures.path("format/tiny-cst/config.json"), "-o", dir.path("m.msz")])
            expectRefused(r, f)
        }
    }
}
