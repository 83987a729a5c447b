import Foundation
import MSFormat
import MSGen
import MSModels
import MSTokenizer

/// A generator over a golden fixture model (Tests/Fixtures/golden: random weights, real
/// byte-level tokenizer: random byte tokens, so multi-byte characters split over tokens
/// are common).
public func fixtureGenerator(_ name: String = "cst_a3_shared_untied_gelutanh_full") throws -> Generator {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/golden/\(name)").path
    let ckpt = try Checkpoint.load(path: dir)
    let model = try Architectures.languageModel(
        config: ckpt.configJSON, tensors: Dictionary(uniqueKeysWithValues: ckpt.tensors.map { ($0.name, $0.tensor) }))
    return Generator(model: model, tokenizer: try BPETokenizer(json: ckpt.tokenizerJSON!))
}
