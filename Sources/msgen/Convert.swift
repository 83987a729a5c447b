import ArgumentParser
import Foundation
import MSFormat
import MSModels

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a training checkpoint into one .msz model file.",
        discussion: """
        CHECKPOINT is a directory holding config.json, model.safetensors (or one PyTorch \
        .pt/.bin/.pth file) and tokenizer.json, or a weights file with --config and \
        --tokenizer. Every tensor is checked against the config before anything is written, \
        and the output appears only when it is complete.
        """
    )

    @Argument(help: "Checkpoint directory or weights file (.safetensors, .pt, .bin).")
    var checkpoint: String

    @Option(name: .shortAndLong, help: "The .msz file to write.")
    var output: String

    @Option(help: "Stored dtype: f32, f16, bf16 or q8 (default: the checkpoint's own). q8 keeps vectors and tensors whose rows are not multiples of 32 in f32.")
    var dtype: String?

    @Option(help: "config.json to use (default: the one beside the weights).")
    var config: String?

    @Option(help: "tokenizer.json to embed (default: the one beside the weights).")
    var tokenizer: String?

    @Option(help: "zstd compression level; 3 is fast and levels above it gain almost nothing.")
    var level: Int32 = 3

    func run() throws {
        let target: DType? = try dtype.map {
            guard let d = DType(rawValue: $0), d.isFloat else { throw MSGenError("--dtype must be f32, f16, bf16 or q8, not \($0)") }
            return d
        }
        try check((1...22).contains(level), "--level must be between 1 and 22")
        let start = Date()
        let ckpt = try Checkpoint.load(path: checkpoint, configPath: config, tokenizerPath: tokenizer)
        let names = try ckpt.validate()
        if ckpt.tokenizerJSON == nil {
            Terminal.note("note: no tokenizer.json; the model will not be able to read or write text")
        }
        // Stored in the config's natural order (embeddings, then layer by layer), which is
        // also the order `inspect` lists them in.
        let rank = Dictionary(names.enumerated().map { ($1, $0) }, uniquingKeysWith: min)
        let tensors = ckpt.tensors.sorted { rank[$0.name]! < rank[$1.name]! }.map { t -> (name: String, tensor: Tensor) in
            guard let target else { return t }
            if target == .q8 && !t.tensor.canQuantize { return (t.name, t.tensor.converted(to: .f32)) }
            return (t.name, t.tensor.converted(to: target))
        }
        let provenance: [String: JSONValue] = [
            "source": .string((ckpt.weightsPath as NSString).lastPathComponent),
            "source_format": .string(ckpt.weightsFormat),
            "converter": .string("msgen \(MSGenCommand.version)"),
            "created": .string(ISO8601DateFormatter().string(from: Date())),
        ]
        try MSZWriter.write(path: output, architecture: ckpt.configJSON["architecture"]?.stringValue ?? "", config: ckpt.configJSON,
                            tokenizer: ckpt.tokenizerJSON, tensors: tensors, provenance: provenance, level: level,
                            progress: { Terminal.progress("converting", $0, $1) })
        let raw = tensors.reduce(0) { $0 + $1.tensor.byteCount }
        let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        Terminal.note(String(format: "wrote %@: %d tensors, %@ (raw %@, %.2fx) in %.1f s", output, tensors.count,
                             humanBytes(size), humanBytes(raw), Double(raw) / Double(max(size, 1)), Date().timeIntervalSince(start)))
    }
}
