import ArgumentParser
import Foundation
import MSFormat
import MSGen
import MSKernels
import MSModels
import MSTokenizer

/// --model and --threads, as every command that runs a model takes them.
struct ModelOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .long], help: "Model file (default: the bundled model for this command, under models/).")
    var model: String?

    // Unconditional, so that "-t -1" gets the message below, not "missing value".
    @Option(name: [.customShort("t"), .long], parsing: .unconditional, help: "Threads for matrix work (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw MSGenError("--threads must be ≥ 1") }
    }

    /// The --model path, or the bundled one.
    func path(default bundled: BundledModel = .generator) throws -> String { try model ?? bundled.path() }

    /// Sets the process-wide thread count when --threads is given (before any model work).
    func applyThreads() {
        if let threads { Kernels.threads = threads }
    }
}

/// The models that ship in models/, found when no --model is given: the environment
/// variable, then models/ in the current directory, then models/ of the source tree the
/// binary was built in (.build/<triple>/<config>/msgen, .build/<config>/msgen), then an
/// installed share/msgen/models beside bin/.
struct BundledModel {
    let fileName: String, environment: String, what: String
    static let generator = BundledModel(fileName: "models/cst-kjv.msz", environment: "MSGEN_MODEL", what: "model")
    static let classifier = BundledModel(fileName: "models/mstrans-fortunes.msz", environment: "MSGEN_CLASSIFIER", what: "classifier")

    func path() throws -> String {
        if let env = ProcessInfo.processInfo.environment[environment], !env.isEmpty { return env }
        let exe = BundledModel.executableDirectory()
        let candidates = [
            URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(fileName),
            exe.appendingPathComponent("../../../\(fileName)").standardized,
            exe.appendingPathComponent("../../\(fileName)").standardized,
            exe.appendingPathComponent("../share/msgen/\(fileName)").standardized,
        ]
        for c in candidates where FileManager.default.fileExists(atPath: c.path) { return c.path }
        throw MSGenError("no --model given and the bundled \(what) \(fileName) was not found (pass --model or set \(environment))")
    }

    /// The directory of the running binary itself. argv[0] is only what the shell was
    /// given ("msgen" when found on PATH, or a symlink), so ask the kernel.
    static func executableDirectory() -> URL {
        let exe =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        return exe.deletingLastPathComponent()
    }
}

/// The tokenizer embedded in a model file.
func openTokenizer(_ file: MSZFile) throws -> BPETokenizer {
    guard let json = file.tokenizerJSON else {
        throw MSGenError("\((file.path as NSString).lastPathComponent) has no tokenizer; convert it with --tokenizer tokenizer.json")
    }
    return try BPETokenizer(json: json)
}

/// A language model file opened for generation: the model and its tokenizer.
func openGenerator(_ path: String) throws -> Generator {
    let file = try MSZFile(path: path)
    return Generator(model: try loadLanguageModel(file), tokenizer: try openTokenizer(file))
}
