import Foundation
import MSFormat
import MSGen
import MSModels
import MSTokenizer

/// The models that ship in models/, found when no --model is given: the environment
/// variable, then models/ in the current directory, then models/ of the source tree the
/// binary was built in (.build/<config>/msgen → ../../models).
struct BundledModel {
    let fileName: String, environment: String, what: String

    static let generator = BundledModel(fileName: "models/cst-kjv.msz", environment: "MSGEN_MODEL", what: "model")
    static let classifier = BundledModel(fileName: "models/mstrans-fortunes.msz", environment: "MSGEN_CLASSIFIER", what: "classifier")

    /// The bundled language model.
    static func path() throws -> String { try generator.path() }

    func path() throws -> String {
        if let env = ProcessInfo.processInfo.environment[environment], !env.isEmpty { return env }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [
            URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(fileName),
            exe.appendingPathComponent("../../../\(fileName)").standardized,
            exe.appendingPathComponent("../../\(fileName)").standardized,
            exe.appendingPathComponent("../share/msgen/\(fileName)").standardized,
        ]
        for c in candidates where FileManager.default.fileExists(atPath: c.path) { return c.path }
        throw MSGenError("no --model given and the bundled \(what) \(fileName) was not found (pass --model or set \(environment))")
    }
}

/// A language model file opened for generation: the model and its tokenizer.
func openGenerator(_ modelPath: String?) throws -> Generator {
    let path = try modelPath ?? BundledModel.path()
    let file = try MSZFile(path: path)
    let model = try loadLanguageModel(file)
    guard let json = file.tokenizerJSON else {
        throw MSGenError("\((path as NSString).lastPathComponent) has no tokenizer; convert it with --tokenizer tokenizer.json")
    }
    return Generator(model: model, tokenizer: try BPETokenizer(json: json))
}
