import Foundation
import MSFormat
import MSGen
import MSModels
import MSTokenizer

/// Where the bundled model is found when no --model is given.
enum BundledModel {
    static let fileName = "models/cst-kjv.msz"

    /// $MSGEN_MODEL, then models/ in the current directory, then models/ of the source
    /// tree the binary was built in (.build/<config>/msgen → ../../models).
    static func path() throws -> String {
        if let env = ProcessInfo.processInfo.environment["MSGEN_MODEL"], !env.isEmpty { return env }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [
            URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(fileName),
            exe.appendingPathComponent("../../../\(fileName)").standardized,
            exe.appendingPathComponent("../../\(fileName)").standardized,
            exe.appendingPathComponent("../share/msgen/\(fileName)").standardized,
        ]
        for c in candidates where FileManager.default.fileExists(atPath: c.path) { return c.path }
        throw MSGenError("no --model given and the bundled model \(fileName) was not found (set MSGEN_MODEL or pass --model)")
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
