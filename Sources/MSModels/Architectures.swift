import Foundation
import MSFormat

/// What every decoder offers the generator, the scorer and the server: a fresh
/// per-sequence cache, a batched prefill at any position, and a batched step.
///
/// Weights are immutable after load and shared by every sequence; all per-sequence
/// state lives in the cache, which only holds state: the model does all the math.
public protocol LanguageModel: AnyObject, Sendable {
    var config: CommonConfig { get }
    /// Whether decoding may go on past `config.context` tokens (CST rolls its summaries;
    /// a model with absolute positions cannot).
    var canDecodePastContext: Bool { get }
    /// Whether `perplexity` should score in one pass through the bounded cache (`--stream`)
    /// unless a window is asked for: a model with no context limit (retina), whose
    /// `config.context` is only a default window. False unless a model says otherwise.
    var prefersStreaming: Bool { get }
    func makeCache() -> DecoderCache
    /// Runs `tokens` after the cache's current position in one batched pass and leaves
    /// exactly the state that decoding them one by one would. Returns the logits of the
    /// rows `logitsFor` (indices into `tokens`), row after row. Long texts go through in
    /// chunks: `prefill(chunked:)`.
    func prefill(_ tokens: [Int], cache: DecoderCache, logitsFor: Range<Int>) throws -> [Float]
    /// Appends one token to each of several sequences in one batched pass (matrix–matrix
    /// products over the batch, attention per sequence); returns their next-token logits,
    /// one row of `vocabSize` per sequence. Tokens must be below the vocabulary size and no
    /// cache past the context unless `canDecodePastContext`.
    func step(_ tokens: [Int], caches: [DecoderCache]) -> [Float]
}

extension LanguageModel {
    public var prefersStreaming: Bool { false }

    /// One token of one sequence.
    public func step(_ token: Int, cache: DecoderCache) -> [Float] { step([token], caches: [cache]) }

    /// Prefill in chunks of at most `chunk` tokens (bounded activation memory), calling
    /// `logits` with each chunk's first token index and the logits of all its rows.
    public func prefill(chunked tokens: [Int], cache: DecoderCache, chunk: Int, logits: ([Float], Range<Int>) throws -> Void) throws {
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + chunk)
            let rows = try prefill(Array(tokens[start..<end]), cache: cache, logitsFor: 0..<(end - start))
            try logits(rows, start..<end)
            start = end
        }
    }

    /// Prefills a prompt of any length (past the context for a model that decodes past
    /// it) in chunks of at most the context, and returns the logits of its last token.
    public func prefill(prompt tokens: [Int], cache: DecoderCache) throws -> [Float] {
        let chunk = max(1, min(config.context, 1024))
        var start = 0, last: [Float] = []
        while start < tokens.count {
            let end = min(tokens.count, start + chunk)
            last = try prefill(Array(tokens[start..<end]), cache: cache, logitsFor: end == tokens.count ? (end - start - 1)..<(end - start) : 0..<0)
            start = end
        }
        return last
    }

    /// The checks every prefill makes before it touches the cache.
    public func checkPrefill(_ tokens: [Int], at position: Int) throws {
        try check(tokens.allSatisfy { $0 >= 0 && $0 < config.vocabSize }, "token id out of range for a vocabulary of \(config.vocabSize)")
        try check(
            canDecodePastContext || position + tokens.count <= config.context,
            "the prompt has \(position + tokens.count) tokens; this model's context is \(config.context)")
    }
}

/// An architecture's config.json as a value; the keys every model shares are `common`.
public protocol ArchitectureConfig: Sendable {
    var common: CommonConfig { get }
}

/// A model its initializer builds from a config and the weight loader.
public protocol LoadableModel: AnyObject {
    associatedtype Config: ArchitectureConfig
    init(_ config: Config, _ weights: Weights) throws
}

extension LoadableModel {
    /// Builds the model from its tensors, checking that none is missing or left over.
    public init(config: Config, tensors: [String: Tensor]) throws {
        let w = Weights(tensors, architecture: config.common.architecture)
        try self.init(config, w)
        try w.finish()
    }
}

/// Per-sequence state of a decoder.
public protocol DecoderCache: AnyObject {
    /// Tokens seen so far.
    var position: Int { get }
    /// Bytes of state held (for memory reports).
    var byteCount: Int { get }
}

/// A cache as the concrete type its model made: the one checked accessor. A cache of
/// another model is a programming error, so it stops with a message saying which.
public func own<C: DecoderCache>(_ cache: DecoderCache, as type: C.Type) -> C {
    guard let c = cache as? C else { preconditionFailure("a \(Swift.type(of: cache)) was given to a model whose cache is a \(C.self)") }
    return c
}

/// What a text classifier gives for one text.
public struct Classification: Sendable, Equatable {
    /// Scores over the labels, and their softmax.
    public let logits: [Float]
    public let probs: [Float]
    /// Tokens of the text that went through the model (without [CLS]).
    public let tokens: Int
    /// True when the text was longer than the model takes and only its start was used.
    public let truncated: Bool
}

/// What every text classifier offers `msgen classify`.
public protocol TextClassifier: AnyObject, Sendable {
    var labels: [String] { get }
    /// The most text tokens one input can have.
    var maxTextTokens: Int { get }
    func classify(_ text: [Int]) throws -> Classification
}

/// One architecture: the name config.json gives it and how to build it from its config
/// and tensors. Each architecture's file declares one of these; the registry below lists
/// them, one line each.
public struct Architecture: Sendable {
    public enum Model {
        case languageModel(LanguageModel)
        case classifier(TextClassifier)
    }
    public let name: String
    /// What the architecture is, for messages ("a language model", "a classifier").
    public let kind: String
    /// One line on what a config of this architecture means (for `inspect`); it checks
    /// the config too.
    public let describe: @Sendable (ConfigReader) throws -> String
    let build: @Sendable (ConfigReader, Weights) throws -> Model

    public init(
        languageModel name: String, describe: @escaping @Sendable (ConfigReader) throws -> String,
        build: @escaping @Sendable (ConfigReader, Weights) throws -> LanguageModel
    ) {
        self.name = name
        kind = "language model"
        self.describe = describe
        self.build = { .languageModel(try build($0, $1)) }
    }

    public init(
        classifier name: String, describe: @escaping @Sendable (ConfigReader) throws -> String,
        build: @escaping @Sendable (ConfigReader, Weights) throws -> TextClassifier
    ) {
        self.name = name
        kind = "classifier"
        self.describe = describe
        self.build = { .classifier(try build($0, $1)) }
    }
}

/// The registry: every architecture msgen runs. Adding one is a file in this module and
/// a line here (or `register` from outside, as the tests do).
public enum Architectures {
    nonisolated(unsafe) private static var registered: [Architecture] = [
        CSTDecoder.architecture,
        TransformerDecoder.architecture,
        MSTransEncoder.architecture,
        TopDownDecoder.architecture,
        BottomUpDecoder.architecture,
        RetinaDecoder.architecture,
    ]
    private static let lock = NSLock()

    public static var all: [Architecture] { lock.withLock { registered } }

    public static func register(_ a: Architecture) {
        lock.withLock {
            registered.removeAll { $0.name == a.name }
            registered.append(a)
        }
    }

    /// The architecture a config names.
    public static func named(in config: JSONValue) throws -> Architecture {
        guard let name = config["architecture"]?.stringValue else { throw MSGenError("config is missing 'architecture'") }
        guard let a = all.first(where: { $0.name == name }) else {
            throw MSGenError("unknown architecture '\(name)' (msgen runs \(all.map(\.name).joined(separator: ", ")))")
        }
        return a
    }

    /// Builds a model from a config and its tensors, checking every key and every tensor.
    /// Also returns the tensor names in the model's natural order.
    public static func load(config: JSONValue, tensors: [String: Tensor]) throws
        -> (model: Architecture.Model, names: [String], weights: WeightSummary)
    {
        let a = try named(in: config)
        let reader = try ConfigReader(config)
        let weights = Weights(tensors, architecture: a.name)
        let model = try a.build(reader, weights)
        try weights.finish()
        return (model, weights.names, weights.summary)
    }
}

extension Architectures {
    /// A language model from a config and its tensors; `file` names it in messages.
    public static func languageModel(config: JSONValue, tensors: @autoclosure () throws -> [String: Tensor], file: String = "the model") throws
        -> LanguageModel
    {
        try languageModelAndWeights(config: config, tensors: try tensors(), file: file).model
    }

    /// The same, with what its weights take.
    public static func languageModelAndWeights(
        config: JSONValue, tensors: @autoclosure () throws -> [String: Tensor],
        file: String = "the model"
    ) throws -> (model: LanguageModel, weights: WeightSummary) {
        let loaded = try load(config, tensors, as: "language model", file: file, command: "this command")
        guard case .languageModel(let m) = loaded.model else { preconditionFailure("load checks the kind") }
        return (m, loaded.weights)
    }

    /// A text classifier from a config and its tensors.
    public static func classifier(config: JSONValue, tensors: @autoclosure () throws -> [String: Tensor], file: String = "the model") throws
        -> TextClassifier
    {
        guard case .classifier(let c) = try load(config, tensors, as: "classifier", file: file, command: "classify").model else {
            preconditionFailure("load checks the kind")
        }
        return c
    }

    /// Checks that the config's architecture is of the kind a command needs before the
    /// tensors are read, then builds the model.
    private static func load(
        _ config: JSONValue, _ tensors: () throws -> [String: Tensor], as kind: String, file: String,
        command: String
    ) throws -> (model: Architecture.Model, names: [String], weights: WeightSummary) {
        let a = try named(in: config)
        guard a.kind == kind else {
            let wanted = all.filter { $0.kind == kind }.map(\.name).joined(separator: " or ")
            throw MSGenError("\(file) is \(article(a.name)) \(a.name) (a \(a.kind)); \(command) needs \(article(kind)) \(kind) (\(wanted))")
        }
        return try load(config: config, tensors: try tensors())
    }

    private static func article(_ word: String) -> String { "aeiou".contains(word.first ?? "x") ? "an" : "a" }
}

extension Checkpoint {
    /// Checks every config key and every tensor by building the model the config names;
    /// returns the tensor names in the model's natural order.
    @discardableResult
    public func validate() throws -> [String] {
        let byName = Dictionary(tensors.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
        return try Architectures.load(config: configJSON, tensors: byName).names
    }
}

/// Opens a model file as a language model.
public func loadLanguageModel(_ file: MSZFile) throws -> LanguageModel {
    try Architectures.languageModel(config: file.config, tensors: try file.load(), file: (file.path as NSString).lastPathComponent)
}

/// Opens a model file as a language model, with what its weights take in memory.
public func openLanguageModel(_ file: MSZFile) throws -> (model: LanguageModel, weights: WeightSummary) {
    try Architectures.languageModelAndWeights(config: file.config, tensors: try file.load(), file: (file.path as NSString).lastPathComponent)
}

/// Opens a model file as a text classifier.
public func loadClassifier(_ file: MSZFile) throws -> TextClassifier {
    try Architectures.classifier(config: file.config, tensors: try file.load(), file: (file.path as NSString).lastPathComponent)
}
