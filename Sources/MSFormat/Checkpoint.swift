import Foundation

/// A training checkpoint as DESIGN §4 describes it: config.json, weights
/// (model.safetensors or a PyTorch zip), and tokenizer.json.
public struct Checkpoint {
    public var configJSON: JSONValue
    public var tensors: [(name: String, tensor: Tensor)]
    public var tokenizerJSON: String?
    public var weightsPath: String
    public var weightsFormat: String

    /// Loads a checkpoint directory, or a weights file with `configPath` (and
    /// `tokenizerPath`) beside it. Explicit paths win over files found in the directory.
    public static func load(path: String, configPath: String? = nil, tokenizerPath: String? = nil) throws -> Checkpoint {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { throw MSGenError("\(path): no such file or directory") }
        let weights: String
        var config = configPath, tokenizer = tokenizerPath
        if isDir.boolValue {
            let dir = URL(fileURLWithPath: path)
            let names = (try? fm.contentsOfDirectory(atPath: path)) ?? []
            if names.contains("model.safetensors") {
                weights = dir.appendingPathComponent("model.safetensors").path
            } else {
                let torch = names.filter { $0.hasSuffix(".pt") || $0.hasSuffix(".bin") || $0.hasSuffix(".pth") }.sorted()
                guard torch.count == 1 else {
                    throw MSGenError(torch.isEmpty
                        ? "\(path) has no weights (model.safetensors, or one .pt/.bin/.pth file)"
                        : "\(path) has several weight files (\(torch.joined(separator: ", "))); pass one of them with --config")
                }
                weights = dir.appendingPathComponent(torch[0]).path
            }
            if config == nil, names.contains("config.json") { config = dir.appendingPathComponent("config.json").path }
            if tokenizer == nil, names.contains("tokenizer.json") { tokenizer = dir.appendingPathComponent("tokenizer.json").path }
        } else {
            weights = path
            let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
            if config == nil, fm.fileExists(atPath: dir.appendingPathComponent("config.json").path) {
                config = dir.appendingPathComponent("config.json").path
            }
            if tokenizer == nil, fm.fileExists(atPath: dir.appendingPathComponent("tokenizer.json").path) {
                tokenizer = dir.appendingPathComponent("tokenizer.json").path
            }
        }
        guard let config else { throw MSGenError("no config.json for \(path) (pass --config FILE)") }

        var configJSON = try JSONValue.parse(try readFile(config), what: config)
        let gpt2 = GPT2.isGPT2(configJSON)
        if gpt2 { configJSON = try GPT2.translate(configJSON) }

        let head = try readFile(weights, prefix: 4)
        let isZip = head.starts(with: [0x50, 0x4B, 0x03, 0x04])
        var tensors = isZip ? try TorchCheckpoint.read(path: weights) : try Safetensors.read(path: weights)
        if gpt2 { tensors = try GPT2.mapTensors(tensors, config: configJSON) }

        var tokenizerText: String?
        if let tokenizer {
            let data = try readFile(tokenizer)
            guard let text = String(data: data, encoding: .utf8),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let model = obj["model"] as? [String: Any], let vocab = model["vocab"] as? [String: Any] else {
                throw MSGenError("\(tokenizer) is not a Hugging Face tokenizer.json")
            }
            let added = (obj["added_tokens"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } ?? []
            let maxId = (vocab.values.compactMap { $0 as? Int } + added).max() ?? -1
            if let vocabSize = configJSON["vocab_size"]?.intValue {
                try check(maxId < vocabSize, "\(tokenizer) has token id \(maxId), but the model's vocab_size is \(vocabSize)")
            }
            tokenizerText = text
        }
        return Checkpoint(configJSON: configJSON, tensors: tensors, tokenizerJSON: tokenizerText,
                          weightsPath: weights, weightsFormat: (gpt2 ? "gpt2 " : "") + (isZip ? "pytorch" : "safetensors"))
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
