import ArgumentParser
import Foundation
import MSFormat
import MSModels

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a .msz model file holds: architecture, config, tokenizer, tensors."
    )

    @Argument(help: "The .msz model file.")
    var model: String

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Flag(help: "Decompress every tensor and check every checksum.")
    var verify = false

    func run() throws {
        Output.setUp()
        let file = try MSZFile(path: model)
        let summary = try Architectures.named(in: file.config).describe(try ConfigReader(file.config))
        let started = Date()
        // --verify builds the model from every decompressed tensor, which also tells what
        // its weights take in memory: matrices in their stored dtype, vectors in f32.
        let tensors = verify ? try file.load() : nil
        let loadSeconds = Date().timeIntervalSince(started)
        let weights = try tensors.map { try Architectures.load(config: file.config, tensors: $0).weights }
        let stored = file.tensors.reduce(0) { $0 + $1.storedBytes }
        let raw = file.tensors.reduce(0) { $0 + $1.rawBytes }
        let params = file.tensors.reduce(0) { $0 + (elementCount($1.shape) ?? 0) }
        let tok = TokenizerSummary(file.tokenizerJSON)

        if json {
            var o: [String: JSONValue] = [
                "file": .string(model), "architecture": .string(file.architecture), "config": file.config,
                "file_bytes": .number(Double(file.fileSize)), "stored_bytes": .number(Double(stored)),
                "raw_bytes": .number(Double(raw)), "parameters": .number(Double(params)),
                "provenance": .object(file.provenance), "tokenizer": tok.json,
                "tensors": .array(
                    file.tensors.map { t in
                        .object([
                            "name": .string(t.name), "dtype": .string(t.dtype.rawValue),
                            "shape": .array(t.shape.map { .number(Double($0)) }),
                            "stored_bytes": .number(Double(t.storedBytes)), "raw_bytes": .number(Double(t.rawBytes)),
                        ])
                    }),
            ]
            if let weights {
                o["verified"] = .bool(true); o["load_seconds"] = .number(loadSeconds)
                o["resident_bytes"] = .object(
                    Dictionary(uniqueKeysWithValues: weights.matrixBytes.filter { $0.value > 0 }.map { ($0.key.rawValue, .number(Double($0.value))) })
                        .merging(["f32 vectors": .number(Double(weights.vectorBytes))]) { a, _ in a })
            }
            say(JSONValue.object(o).compactText)
            return
        }
        say("\(model): \(file.architecture), \(params.formatted()) parameters in \(file.tensors.count) tensors")
        say(
            String(
                format: "  %@ on disk, %@ of tensor data, compression %.2fx", humanBytes(file.fileSize), humanBytes(raw),
                Double(raw) / Double(max(stored, 1))))
        say("config:")
        for (k, v) in (file.config.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) { say("  \(k): \(v.compactText)") }
        say("  (\(summary))")
        say("tokenizer: \(tok.text)")
        say("provenance:")
        for (k, v) in file.provenance.sorted(by: { $0.key < $1.key }) { say("  \(k): \(v.stringValue ?? v.compactText)") }
        say("tensors:")
        let w = file.tensors.map(\.name.count).max() ?? 4
        for t in file.tensors {
            let name = t.name.padding(toLength: w, withPad: " ", startingAt: 0)
            let shape = shapeString(t.shape).padding(toLength: 14, withPad: " ", startingAt: 0)
            say(
                String(
                    format: "  %@  %-4@  %@  %10@  raw %10@  %.2fx", name, t.dtype.rawValue, shape,
                    humanBytes(t.storedBytes), humanBytes(t.rawBytes), Double(t.rawBytes) / Double(t.storedBytes)))
        }
        if let weights {
            say(
                String(
                    format: "verified: all %d tensors decompress and match their checksums (%@ in %.3f s, %.2f GB/s)",
                    file.tensors.count, humanBytes(raw), loadSeconds, Double(raw) / loadSeconds / 1e9))
            let parts =
                weights.matrixBytes.filter { $0.value > 0 }.sorted { $0.key.rawValue < $1.key.rawValue }
                .map { "\(humanBytes($0.value)) \($0.key.rawValue) matrices" } + ["\(humanBytes(weights.vectorBytes)) f32 vectors"]
            say("in memory: \(humanBytes(weights.residentBytes)) (\(parts.joined(separator: ", ")))")
        }
    }
}

/// One line of output.
private func say(_ line: String) { Output.write(line + "\n") }

/// A few facts about an embedded tokenizer.json, for display.
struct TokenizerSummary {
    var text = "none"
    var json: JSONValue = .null

    init(_ tokenizerJSON: String?) {
        guard let s = tokenizerJSON, let obj = try? JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any],
            let model = obj["model"] as? [String: Any]
        else { return }
        let type = model["type"] as? String ?? "?"
        let vocab = (model["vocab"] as? [String: Any])?.count ?? 0
        let merges = (model["merges"] as? [Any])?.count ?? 0
        let added = (obj["added_tokens"] as? [[String: Any]]) ?? []
        let special = added.compactMap { t -> String? in
            guard let c = t["content"] as? String, let id = t["id"] as? Int else { return nil }
            return "\(c)=\(id)"
        }
        let pre = (obj["pre_tokenizer"] as? [String: Any])?["type"] as? String ?? "none"
        text =
            "\(type), \(vocab) tokens, \(merges) merges, pre-tokenizer \(pre)"
            + (special.isEmpty ? "" : ", special \(special.joined(separator: " "))")
        json = .object([
            "type": .string(type), "vocab": .number(Double(vocab)), "merges": .number(Double(merges)),
            "pre_tokenizer": .string(pre), "special": .array(special.map { .string($0) }),
        ])
    }
}
