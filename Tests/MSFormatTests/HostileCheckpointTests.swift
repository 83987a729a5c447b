import Foundation
import Testing

@testable import MSFormat

/// Crafted and odd training checkpoints (tools/make_convert_fixtures.py made the files):
/// each is one clear error, never a trap, a hang or an allocation the size of a claim.
struct HostileCheckpointTests {
    let dir = TempDir()

    func torchError(_ fixture: String) -> String {
        do { _ = try TorchCheckpoint.read(path: Fixtures.path("format/" + fixture)); return "no error" } catch {
            #expect(error is MSGenError)
            return "\(error)"
        }
    }

    // MARK: sizes from the file (issue 12 item 4)

    @Test(arguments: [
        ("huge_numel.pt", "declares 2305843009213693952 elements"),  // 2^61 floats: 2^63 bytes overflow
        ("huge_offset.pt", "reaches past its storage"),  // offset 2^63 - 2
        ("huge_stride.pt", "reaches past its storage"),  // 2 × 2^62 overflows
        ("huge_broadcast.pt", "a broadcast view"),  // 2^40 elements over 4 stored
        ("zip_claim.pt", "claims an impossible size"),  // 16 bytes stored, 1 GiB claimed: not reserved
    ])
    func impossibleGeometryIsAnError(fixture: String, message: String) {
        let e = torchError(fixture)
        #expect(e.contains(message), "\(e)")
    }

    @Test func safetensorsSizesAreOverflowChecked() throws {
        // The same claims in a safetensors header.
        let body = Data(count: 16)
        let cases: [([String: Any], String)] = [
            (["w": ["dtype": "F32", "shape": [1 << 61, 4], "data_offsets": [0, 16]]], "impossible shape"),
            (["w": ["dtype": "F32", "shape": [4], "data_offsets": [0, Int.max]]], "outside the file"),
            (["w": ["dtype": "F32", "shape": [4], "data_offsets": [Int.max - 1, 16]]], "outside the file"),
            (["w": ["dtype": "F32", "shape": [-4], "data_offsets": [0, 16]]], "impossible shape"),
        ]
        for (i, (header, message)) in cases.enumerated() {
            let json = try JSONSerialization.data(withJSONObject: header)
            var file = Data()
            withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
            let p = dir.path("bad\(i).safetensors")
            try (file + json + body).write(to: URL(fileURLWithPath: p))
            #expect { _ = try Safetensors.read(path: p) } throws: { "\($0)".contains(message) }
        }
    }

    // MARK: the unpickler (item 3)

    @Test func selfReferencingDictIsAnError() {
        // d = dict(sd); d['self'] = d; torch.save(d, f): the walk used to recurse forever.
        let e = torchError("self_ref.pt")
        #expect(e.contains("the dict under 'self' contains itself"), "\(e)")
    }

    @Test func sharedDictsCannotExplode() {
        // 40 levels of {"x": d, "y": d}: 2 kB on disk, 2^40 paths.
        let e = torchError("shared_dicts.pt")
        #expect(e.contains("more than \(TorchCheckpoint.maxEntries) entries"), "\(e)")
    }

    @Test func deepNestingIsAnError() {
        let e = torchError("deep_dicts.pt")
        #expect(e.contains("nest deeper than \(TorchCheckpoint.maxNesting)"), "\(e)")
    }

    /// Raw pickles straight into the unpickler.
    func unpickle(_ ops: [UInt8], maxValues: Int = Unpickler.maxValues) -> String {
        var u = Unpickler([0x80, 0x02] + ops + [0x2E], what: "p.pkl", maxValues: maxValues)
        do { _ = try u.load(); return "no error" } catch { return "\(error)" }
    }

    @Test func pickleLimitsAreClearErrors() {
        #expect(
            unpickle([UInt8](repeating: 0x28, count: Unpickler.maxMarkDepth + 1) + [0x4E])
                .contains("nests deeper than \(Unpickler.maxMarkDepth) levels"))
        // A value below an open MARK belongs to the enclosing frame: TUPLE1 cannot take it.
        #expect(unpickle([0x4E, 0x28, 0x85]).contains("stack underflow"))
        #expect(unpickle([0x28, 0x74]).contains("no error"))  // an empty tuple is fine
        #expect(unpickle([0x74]).contains("no mark"))
        #expect(unpickle([0x68, 0x07]).contains("unknown memo 7"))
        // The value limits, lowered to 100: 101 NONEs on the stack, 101 memo entries.
        #expect(unpickle([UInt8](repeating: 0x4E, count: 101), maxValues: 100).contains("more than 100 values on its stack"))
        #expect(unpickle([UInt8](repeating: 0x4E, count: 100), maxValues: 100) == "no error")
        #expect(unpickle([0x4E] + (0...100).flatMap { [0x71, UInt8($0)] }, maxValues: 100).contains("memoizes more than 100 values"))
        #expect(unpickle([0x4E] + (0...100).flatMap { _ in [0x71, 0x05] }, maxValues: 100) == "no error")  // one key, rewritten
    }

    @Test func tuplesCannotNestWithoutBound() {
        // TUPLE1 a million times would be a million-deep value, freed recursively.
        let depth = Unpickler.maxTupleDepth
        #expect(unpickle([0x4E] + [UInt8](repeating: 0x85, count: depth)) == "no error")
        #expect(unpickle([0x4E] + [UInt8](repeating: 0x85, count: depth + 1)).contains("nests tuples deeper than \(depth) levels"))
        // Depth is the deepest element's plus one, whichever place it holds.
        #expect(unpickle([0x4E, 0x4E] + [UInt8](repeating: 0x85, count: depth) + [0x86]).contains("nests tuples deeper"))
    }

    @Test func aDictHoldingItselfIsFreedAfterTheRead() throws {
        // EMPTY_DICT, MEMOIZE, "k", BINGET 0, SETITEM: d["k"] = d, a reference cycle
        // (found by the torch fuzzer as a leak). `release` must break it.
        var u = Unpickler([0x80, 0x02, 0x7D, 0x94, 0x8C, 0x01, 0x6B, 0x68, 0x00, 0x73, 0x2E], what: "p.pkl")
        weak var dict: Unpickler.Dict?
        do {
            guard case .dict(let d) = try u.load() else { Issue.record("not a dict"); return }
            dict = d
            #expect(d.items.count == 1)
        }
        #expect(dict != nil)  // the cycle keeps it alive until released
        u.release()
        #expect(dict == nil)
    }

    // MARK: formats and messages (items 12, 13)

    @Test func legacyTorchFileSaysHowToResave() {
        let e = torchError("legacy.pt")
        #expect(e.contains("legacy PyTorch file") && e.contains("_use_new_zipfile_serialization=True"), "\(e)")
    }

    @Test func shardedSafetensorsReadLikeTheWholeFile() throws {
        let whole = try Checkpoint.load(path: Fixtures.path("format/tiny-cst"))
        let sharded = try Checkpoint.load(path: Fixtures.path("format/tiny-cst-sharded"))
        try sharded.validate()
        #expect(sharded.weightsFormat == "sharded safetensors")
        #expect(sharded.inputPaths.filter { $0.hasSuffix(".safetensors") }.count == 2)
        let a = Dictionary(uniqueKeysWithValues: whole.tensors.map { ($0.name, $0.tensor) })
        let b = Dictionary(uniqueKeysWithValues: sharded.tensors.map { ($0.name, $0.tensor) })
        #expect(Set(a.keys) == Set(b.keys) && a.count == 22)
        for (name, t) in a { #expect(b[name]!.shape == t.shape && b[name]!.floats() == t.floats(), "\(name)") }
    }

    @Test func indexesAreFoundByNameOrGivenAsThePath() throws {
        // pytorch_model.bin.index.json is read the same way (each shard by its own format),
        // and an index file may be given directly, with the config beside it.
        let ckpt = try copyFixture("format/tiny-cst-sharded", into: dir)
        try FileManager.default.moveItem(atPath: ckpt + "/model.safetensors.index.json", toPath: ckpt + "/pytorch_model.bin.index.json")
        for path in [ckpt, ckpt + "/pytorch_model.bin.index.json"] {
            let c = try Checkpoint.load(path: path)
            try c.validate()
            #expect(c.tensors.count == 22 && c.inputPaths.contains(ckpt + "/pytorch_model.bin.index.json"))
        }
    }

    @Test func damagedShardIndexesAreClearErrors() throws {
        func error(_ edit: (inout [String: Any]) -> Void) throws -> String {
            let ckpt = try copyFixture("format/tiny-cst-sharded", into: dir)
            let url = URL(fileURLWithPath: ckpt + "/model.safetensors.index.json")
            var index = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            edit(&index)
            try JSONSerialization.data(withJSONObject: index).write(to: url)
            do { _ = try Checkpoint.load(path: ckpt); return "no error" } catch { return "\(error)" }
        }
        func editMap(_ name: String, _ file: String) -> (inout [String: Any]) -> Void {
            { index in
                var m = index["weight_map"] as! [String: Any]; m[name] = file; index["weight_map"] = m
            }
        }
        #expect(try error(editMap("embed.weight", "../tiny-cst/model.safetensors")).contains("not a file name beside the index"))
        #expect(
            try error(editMap("embed.weight", "model-00009-of-00009.safetensors")).contains(
                "lists the shard model-00009-of-00009.safetensors, which is missing"))
        #expect(
            try error(editMap("ghost.weight", "model-00001-of-00002.safetensors")).contains(
                "puts ghost.weight in model-00001-of-00002.safetensors, which does not hold it"))
        #expect(try error { $0.removeValue(forKey: "weight_map") }.contains("no \"weight_map\""))
    }

    // MARK: GPT-2 mapping (item 1)

    /// The GPT-2 fixture with one tensor replaced.
    func gpt2(replacing name: String, with t: Tensor) throws -> String {
        let ckpt = try copyFixture("gpt2", into: dir)
        let tensors = try Safetensors.read(path: ckpt + "/model.safetensors")
        #expect(tensors.contains { $0.name == name })
        try writeSafetensors(replacing(name, in: tensors, with: t), to: ckpt + "/model.safetensors")
        return ckpt
    }

    @Test(arguments: [
        ("transformer.h.0.attn.c_attn.bias", [100], "h.0.attn.c_attn.bias has shape [100], the config needs [96]"),
        ("transformer.h.1.attn.c_attn.bias", [50], "h.1.attn.c_attn.bias has shape [50], the config needs [96]"),
        ("transformer.h.0.attn.c_attn.weight", [32, 95], "h.0.attn.c_attn.weight has shape [32, 95], the config needs [32, 96]"),
        ("transformer.h.0.mlp.c_fc.weight", [4096], "h.0.mlp.c_fc.weight has shape [4096], the config needs [32, 128]"),
        ("transformer.h.0.mlp.c_proj.weight", [32, 128], "h.0.mlp.c_proj.weight has shape [32, 128], the config needs [128, 32]"),
        ("transformer.h.0.attn.c_proj.weight", [32, 31], "h.0.attn.c_proj.weight has shape [32, 31], the config needs [32, 32]"),
    ])
    func gpt2ShapesAreCheckedBeforeReading(name: String, shape: [Int], message: String) throws {
        let bad = MSZTests.randomTensor(shape, seed: 5)
        let e: String
        do { _ = try Checkpoint.load(path: try gpt2(replacing: name, with: bad)); e = "no error" } catch { e = "\(error)" }
        #expect(e.contains(message), "\(e)")
    }

    /// The same tensor under its name with and without "transformer." is ambiguous: one of
    /// them (a bias of the wrong shape, here) must not be dropped silently.
    @Test func gpt2TensorTwiceIsAnError() throws {
        let ckpt = try copyFixture("gpt2", into: dir)
        var tensors = try Safetensors.read(path: ckpt + "/model.safetensors")
        tensors.append(("h.0.attn.c_attn.bias", MSZTests.randomTensor([100], seed: 3)))
        try writeSafetensors(tensors, to: ckpt + "/model.safetensors")
        #expect { _ = try Checkpoint.load(path: ckpt) } throws: {
            "\($0)" == "GPT-2 checkpoint has h.0.attn.c_attn.bias twice (with and without 'transformer.')"
        }
    }

    @Test func gpt2ConfigTypesAreNamed() throws {
        func error(_ key: String, _ value: Any) throws -> String {
            let ckpt = try copyFixture("gpt2", into: dir)
            let url = URL(fileURLWithPath: ckpt + "/config.json")
            var c = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            c[key] = value
            try JSONSerialization.data(withJSONObject: c).write(to: url)
            do { _ = try Checkpoint.load(path: ckpt); return "no error" } catch { return "\(error)" }
        }
        #expect(try error("n_layer", "2") == "config 'n_layer' must be an integer ≥ 1, not \"2\"")
        #expect(try error("n_embd", 32.5) == "config 'n_embd' must be an integer ≥ 1, not 32.5")
        #expect(try error("n_inner", "128").contains("config 'n_inner' must be an integer"))
        #expect(try error("n_head", NSNull()) == "GPT-2 config is missing 'n_head'")
    }

    // MARK: non-finite values

    @Test func nonFiniteValuesAreFoundInEveryDType() {
        let clean = MSZTests.randomTensor([4, 32], seed: 2)
        for dtype in [DType.f32, .f16, .bf16, .q8] { #expect(clean.converted(to: dtype).nonFinite() == nil, "\(dtype)") }
        var values = clean.floats()
        values[37] = .nan; values[90] = -.infinity
        let bad = Tensor(shape: [4, 32], floats: values)
        #expect(bad.nonFinite()! == (2, 37))
        #expect(bad.converted(to: .f16).nonFinite()! == (2, 37))
        #expect(bad.converted(to: .bf16).nonFinite()! == (2, 37))
        // Beyond half's range (65504) a finite f32 becomes infinite in f16, not in bf16.
        let large = Tensor(shape: [2], floats: [1, 1e6])
        #expect(large.nonFinite() == nil && large.converted(to: .bf16).nonFinite() == nil)
        #expect(large.converted(to: .f16).nonFinite()! == (1, 1))
    }
}
