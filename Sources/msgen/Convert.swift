import ArgumentParser
import Foundation
import MSFormat
import MSModels
import MSTokenizer

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a training checkpoint into one .msz model file.",
        discussion: """
            CHECKPOINT is a directory holding config.json, model.safetensors (or its shards with \
            model.safetensors.index.json, or one PyTorch .pt/.bin/.pth file) and tokenizer.json \
            (or GPT-2's vocab.json + merges.txt), or a weights file with --config and \
            --tokenizer, or an .msz model to store again in another --dtype. Every tensor is \
            checked against the config, and the tokenizer by building it, before anything is \
            written; weights that are NaN or infinite are refused. The output appears only when \
            it is complete, and never replaces an input, a read-only file or anything that is \
            not a regular file.
            """
    )

    @Argument(help: "Checkpoint directory, weights file (.safetensors, .pt, .bin, *.index.json) or .msz model.")
    var checkpoint: String

    @Option(name: .shortAndLong, help: "The .msz file to write.")
    var output: String

    @Option(
        help:
            "Stored dtype: f32, f16, bf16 or q8 (default: the checkpoint's own). q8 keeps vectors and tensors whose rows are not multiples of 32 in f32."
    )
    var dtype: String?

    @Option(help: "config.json to use (default: the one beside the weights).")
    var config: String?

    @Option(help: "tokenizer.json to embed (default: the one beside the weights).")
    var tokenizer: String?

    @Option(help: "zstd compression level; 3 is fast and levels above it gain almost nothing.")
    var level: Int32 = 3

    @Flag(help: "Convert even if weights are NaN or infinite (or become infinite in the chosen --dtype).")
    var allowNonfinite = false

    func run() throws {
        let target: DType? = try dtype.map {
            guard let d = DType(rawValue: $0), d.isFloat else { throw MSGenError("--dtype must be f32, f16, bf16 or q8, not \($0)") }
            return d
        }
        try check((1...22).contains(level), "--level must be between 1 and 22")
        let start = Date()
        let ckpt = try Checkpoint.load(path: checkpoint, configPath: config, tokenizerPath: tokenizer)
        try checkOutputPath(output, inputs: ckpt.inputPaths)
        // Every key and tensor, checked by building the model the config names; the order
        // its initializer reads the tensors in is their natural order.
        let names = try ckpt.validate()
        if let json = ckpt.tokenizerJSON {
            try checkTokenizer(json, source: ckpt.tokenizerSource ?? "the tokenizer")
        } else {
            Terminal.note("note: no tokenizer.json (or vocab.json + merges.txt); the model will not be able to read or write text")
        }
        // Stored in that order (embeddings, then layer by layer), which is also the order
        // `inspect` lists them in.
        let rank = Dictionary(names.enumerated().map { ($1, $0) }, uniquingKeysWith: min)
        let tensors = try ckpt.tensors.sorted { rank[$0.name]! < rank[$1.name]! }.map { t -> (name: String, tensor: Tensor) in
            try checkFinite(t.name, t.tensor, what: "in \((ckpt.weightsPath as NSString).lastPathComponent)")
            guard let target else { return t }
            let stored = target == .q8 && !t.tensor.canQuantize ? t.tensor.converted(to: .f32) : t.tensor.converted(to: target)
            try checkFinite(t.name, stored, what: "once stored as \(stored.dtype) (values beyond its range; try --dtype bf16 or f32)")
            return (t.name, stored)
        }
        try MSZWriter.write(
            path: output, architecture: ckpt.configJSON["architecture"]?.stringValue ?? "", config: ckpt.configJSON,
            tokenizer: ckpt.tokenizerJSON, tensors: tensors, provenance: provenance(ckpt), level: level,
            progress: { Terminal.progress("converting", $0, $1) })
        let raw = tensors.reduce(0) { $0 + $1.tensor.byteCount }
        let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        Terminal.note(
            String(
                format: "wrote %@: %d tensors, %@ (raw %@, %.2fx) in %.1f s", output, tensors.count,
                humanBytes(size), humanBytes(raw), Double(raw) / Double(max(size, 1)), Date().timeIntervalSince(start)))
    }

    /// The tokenizer must be one the runtime can build: checked now, not at the first
    /// generate. The runtime's own reasons (a Lowercase normalizer, a WordPiece model) are
    /// the message.
    private func checkTokenizer(_ json: String, source: String) throws {
        do { _ = try BPETokenizer(json: json) } catch {
            throw MSGenError("cannot use the tokenizer of \(source): \(error)")
        }
    }

    /// NaN or infinite weights make every output NaN: refused unless --allow-nonfinite.
    private func checkFinite(_ name: String, _ t: Tensor, what: String) throws {
        guard !allowNonfinite, let bad = t.nonFinite() else { return }
        throw MSGenError(
            "tensor \(name) has \(bad.count) NaN or infinite value\(bad.count == 1 ? "" : "s") (the first at element \(bad.first)) \(what); pass --allow-nonfinite to convert it anyway"
        )
    }

    /// Where the file came from. An .msz input keeps its own provenance and records the
    /// re-conversion beside it.
    private func provenance(_ ckpt: Checkpoint) -> [String: JSONValue] {
        let now: [String: JSONValue] = [
            "source": .string((ckpt.weightsPath as NSString).lastPathComponent),
            "source_format": .string(ckpt.weightsFormat),
            "converter": .string("msgen \(MSGenCommand.version)"),
            "created": .string(ISO8601DateFormatter().string(from: Date())),
        ]
        guard var kept = ckpt.sourceProvenance else { return now }
        kept["reconverted"] = .object(now.merging(["dtype": .string(dtype ?? "unchanged")]) { $1 })
        return kept
    }
}
