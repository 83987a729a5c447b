import Foundation

/// A training checkpoint (Sources/MSModels/README.md lists its tensor names): config.json, weights
/// (model.safetensors, its shards with model.safetensors.index.json, or a PyTorch zip)
/// and tokenizer.json (or GPT-2's vocab.json + merges.txt). An `.msz` file also loads as
/// one, so that convert can re-store it in another dtype.
public struct Checkpoint {
    public var configJSON: JSONValue
    public var tensors: [(name: String, tensor: Tensor)]
    public var tokenizerJSON: String?
    /// Where the tokenizer came from (a tokenizer.json, "vocab.json + merges.txt", or the .msz).
    public var tokenizerSource: String?
    public var weightsPath: String
    public var weightsFormat: String
    /// Every file read, so that convert can refuse to write over one of them.
    public var inputPaths: [String]
    /// The provenance of an `.msz` input; nil for a training checkpoint.
    public var sourceProvenance: [String: JSONValue]?

    /// The file names a checkpoint directory may hold, in the order they are looked for.
    static let safetensorsName = "model.safetensors"
    static let safetensorsIndexName = "model.safetensors.index.json"
    static let torchIndexName = "pytorch_model.bin.index.json"

    /// Loads a checkpoint directory, or a weights file with `configPath` (and
    /// `tokenizerPath`) beside it. Explicit paths win over files found in the directory.
    public static func load(path: String, configPath: String? = nil, tokenizerPath: String? = nil) throws -> Checkpoint {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { throw MSGenError("\(path): no such file or directory") }
        if !isDir.boolValue, try readFile(path, prefix: 4) == Data(MSZ.magic) {
            try check(
                configPath == nil && tokenizerPath == nil,
                "\(path) is an .msz model, which carries its own config and tokenizer; drop --config and --tokenizer")
            return try loadMSZ(path)
        }
        let dir = isDir.boolValue ? path : URL(fileURLWithPath: path).deletingLastPathComponent().path
        let names = Set((try? fm.contentsOfDirectory(atPath: dir)) ?? [])
        func inDir(_ name: String) -> String? { names.contains(name) ? URL(fileURLWithPath: dir).appendingPathComponent(name).path : nil }

        let weights = isDir.boolValue ? try weightsInDirectory(path, names) : path
        guard let config = configPath ?? inDir("config.json") else { throw MSGenError("no config.json for \(path) (pass --config FILE)") }

        var configJSON = try JSONValue.parse(try readFile(config), what: config)
        let gpt2 = GPT2.isGPT2(configJSON)
        if gpt2 { configJSON = try GPT2.translate(configJSON) }

        let (shards, format) = try weightFiles(weights)
        var tensors: [(name: String, tensor: Tensor)] = []
        var shardOf: [String: String] = [:]
        for shard in shards.files {
            let file = (shard as NSString).lastPathComponent
            for t in try readWeights(shard) {
                if let other = shardOf[t.name] { throw MSGenError("\(weights): tensor \(t.name) is stored twice (in \(other) and \(file))") }
                shardOf[t.name] = file
                tensors.append(t)
            }
        }
        for (name, file) in shards.expected.sorted(by: { $0.key < $1.key }) where shardOf[name] != file {
            throw MSGenError("\(weights) puts \(name) in \(file), which does not hold it")
        }
        if gpt2 { tensors = try GPT2.mapTensors(tensors, config: configJSON) }

        var inputs = [config] + shards.files + (shards.index.map { [$0] } ?? [])
        var tokenizerText: String?, tokenizerSource: String?
        if let tokenizer = tokenizerPath ?? inDir("tokenizer.json") {
            tokenizerText = try tokenizerJSON(tokenizer)
            tokenizerSource = tokenizer
            inputs.append(tokenizer)
        } else if let vocab = inDir("vocab.json"), let merges = inDir("merges.txt") {
            tokenizerText = try GPT2.tokenizerJSON(vocab: readFile(vocab), merges: readFile(merges), what: "\(vocab) + merges.txt")
            tokenizerSource = "\(vocab) + merges.txt"
            inputs += [vocab, merges]
        }
        if let tokenizerText, let tokenizerSource { try checkTokenIds(tokenizerText, tokenizerSource, vocabSize: configJSON["vocab_size"]?.intValue) }
        return Checkpoint(
            configJSON: configJSON, tensors: tensors, tokenizerJSON: tokenizerText,
            tokenizerSource: tokenizerSource, weightsPath: weights,
            weightsFormat: (gpt2 ? "gpt2 " : "") + format, inputPaths: inputs, sourceProvenance: nil)
    }

    /// The weights of a checkpoint directory: model.safetensors, its index, a torch index,
    /// or the only .pt/.bin/.pth file.
    private static func weightsInDirectory(_ path: String, _ names: Set<String>) throws -> String {
        let dir = URL(fileURLWithPath: path)
        for name in [safetensorsName, safetensorsIndexName, torchIndexName] where names.contains(name) {
            return dir.appendingPathComponent(name).path
        }
        let torch = names.filter { $0.hasSuffix(".pt") || $0.hasSuffix(".bin") || $0.hasSuffix(".pth") }.sorted()
        guard torch.count == 1 else {
            throw MSGenError(
                torch.isEmpty
                    ? "\(path) has no weights (model.safetensors, \(safetensorsIndexName) with its shards, or one .pt/.bin/.pth file)"
                    : "\(path) has several weight files (\(torch.joined(separator: ", "))); pass one of them with --config")
        }
        return dir.appendingPathComponent(torch[0]).path
    }

    /// The files to read for `weights` (the shards, for an index) and a format name.
    private static func weightFiles(_ weights: String) throws -> (shards: Shards, format: String) {
        guard weights.hasSuffix(".index.json") else { return (Shards(files: [weights], expected: [:], index: nil), try format(of: weights)) }
        let shards = try Shards(index: weights)
        return (shards, "sharded " + (try shards.files.first.map(format(of:)) ?? "safetensors"))
    }

    /// "pytorch" or "safetensors", from the first bytes; a legacy torch file is an error.
    private static func format(of path: String) throws -> String {
        let head = try readFile(path, prefix: 4)
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return "pytorch" }
        if try TorchCheckpoint.isLegacy(path) { throw TorchCheckpoint.legacyError((path as NSString).lastPathComponent) }
        return "safetensors"
    }

    private static func readWeights(_ path: String) throws -> [(name: String, tensor: Tensor)] {
        try format(of: path) == "pytorch" ? TorchCheckpoint.read(path: path) : Safetensors.read(path: path)
    }

    /// An `.msz` model as a checkpoint: its config, tokenizer, provenance and tensors.
    private static func loadMSZ(_ path: String) throws -> Checkpoint {
        let file = try MSZFile(path: path)
        let loaded = try file.load()
        return Checkpoint(
            configJSON: file.config, tensors: file.tensors.map { ($0.name, loaded[$0.name]!) },
            tokenizerJSON: file.tokenizerJSON, tokenizerSource: file.tokenizerJSON == nil ? nil : path,
            weightsPath: path, weightsFormat: "msz", inputPaths: [path], sourceProvenance: file.provenance)
    }

    /// A tokenizer.json's text, after a first look that it is one.
    private static func tokenizerJSON(_ path: String) throws -> String {
        let data = try readFile(path)
        guard let text = String(data: data, encoding: .utf8),
            let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any], obj["model"] is [String: Any]
        else {
            throw MSGenError("\(path) is not a Hugging Face tokenizer.json")
        }
        return text
    }

    /// Every token id of the tokenizer is below the config's vocab_size (a config without
    /// a valid one is reported by validation).
    private static func checkTokenIds(_ text: String, _ source: String, vocabSize: Int?) throws {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let model = obj["model"] as? [String: Any], let vocab = model["vocab"] as? [String: Any]
        else {
            throw MSGenError("\(source) is not a Hugging Face tokenizer.json (no model.vocab)")
        }
        let added = (obj["added_tokens"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } ?? []
        let maxId = (vocab.values.compactMap { $0 as? Int } + added).max() ?? -1
        guard let vocabSize else { return }
        try check(maxId < vocabSize, "\(source) has token id \(maxId), but the model's vocab_size is \(vocabSize)")
    }
}

/// The shard files of a `*.index.json` (as transformers' save_pretrained writes them for
/// large models): {"metadata": {...}, "weight_map": {tensor name: shard file name}}.
struct Shards {
    var files: [String]
    /// The shard each tensor should be in.
    var expected: [String: String]
    var index: String?

    init(files: [String], expected: [String: String], index: String?) {
        self.files = files; self.expected = expected; self.index = index
    }

    init(index path: String) throws {
        guard let obj = try? JSONSerialization.jsonObject(with: readFile(path)) as? [String: Any],
            let map = obj["weight_map"] as? [String: Any], !map.isEmpty
        else {
            throw MSGenError("\(path) is not a sharded-checkpoint index (no \"weight_map\" object of tensor → file)")
        }
        let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
        var expected: [String: String] = [:]
        for (name, value) in map {
            // Shards are file names beside the index: never a path that leaves the directory.
            guard let file = value as? String, !file.isEmpty, !file.contains("/"), file != ".", file != ".." else {
                throw MSGenError("\(path): the shard of \(name) is not a file name beside the index")
            }
            expected[name] = file
        }
        let files = Set(expected.values).sorted()
        for f in files where !FileManager.default.fileExists(atPath: dir.appendingPathComponent(f).path) {
            throw MSGenError("\(path) lists the shard \(f), which is missing")
        }
        self.init(files: files.map { dir.appendingPathComponent($0).path }, expected: expected, index: path)
    }
}

/// Reads a file (or its first `prefix` bytes) with a clear error.
public func readFile(_ path: String, prefix: Int? = nil) throws -> Data {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw MSGenError("\(path): no such file") }
    if isDir.boolValue { throw MSGenError("\(path) is a directory, not a file") }
    guard let h = FileHandle(forReadingAtPath: path) else { throw MSGenError("cannot read \(path): permission denied") }
    defer { try? h.close() }
    do {
        if let prefix { return try h.read(upToCount: prefix) ?? Data() }
        return try h.readToEnd() ?? Data()
    } catch { throw MSGenError("cannot read \(path): \(error.localizedDescription)") }
}
