import Foundation
import MSFormat
import MSModels
import MSTokenizer

public struct GenerationOptions: Sendable {
    public var maxTokens = 256
    public var stop: [String] = []
    public var ignoreEOS = false
    public var sampler = SamplerOptions()
    /// nil: tokens report no log-probabilities (and none pays for the logSumExp over the
    /// vocabulary they take); n: each token reports its own and those of the n most likely
    /// alternatives (OpenAI's `logprobs: 0` is its own only).
    public var logprobs: Int?
    public init() {}
}

public enum StopReason: String, Sendable {
    case eos, maxTokens = "max_tokens", stop, cancelled
    /// The context is full and the model cannot decode past it (the baseline).
    case contextFull = "context_full"
}

public struct GenerationSummary: Sendable {
    public var stopReason: StopReason
    public var promptTokens: Int
    public var generatedTokens: Int
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    public var seed: UInt64
    public var cacheBytes: Int
    /// Text that was still held back when generation was cancelled (an unfinished
    /// character, the start of a possible stop string): to print before ending. Token
    /// events carried everything else ("" unless cancelled).
    public var heldBackText = ""
}

public enum GenerationEvent: Sendable {
    /// One generated token (see `Decoded`: its printable text, own text, logprobs).
    case token(Decoded)
    case done(GenerationSummary)
}

/// Streams a continuation of a prompt: prefill in batched chunks, then one token at a
/// time through the model's bounded cache; `Decoding` samples, detokenizes and decides
/// when to stop.
public final class Generator: @unchecked Sendable {
    public let model: LanguageModel
    public let tokenizer: BPETokenizer

    public init(model: LanguageModel, tokenizer: BPETokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    public var eos: Int? { model.config.eosTokenId ?? tokenizer.eosTokenId }

    /// The prompt's tokens, checked against the context; an empty prompt starts from the
    /// end-of-text token.
    public func promptTokens(_ prompt: String) throws -> [Int] {
        var ids = tokenizer.encode(prompt)
        if ids.isEmpty {
            guard let eos else { throw MSGenError("the prompt is empty and the model has no end-of-text token to start from") }
            ids = [eos]
        }
        try checkPrompt(ids)
        return ids
    }

    func checkPrompt(_ ids: [Int]) throws {
        try Decoding.checkPrompt(count: ids.count, context: model.config.context, canDecodePastContext: model.canDecodePastContext)
    }

    /// The continuation as an asynchronous stream of events; cancelling the consuming
    /// task stops generation after the current token.
    public func stream(_ prompt: [Int], options: GenerationOptions) -> AsyncThrowingStream<GenerationEvent, Error> {
        AsyncThrowingStream { continuation in
            let cancelled = Flag()
            continuation.onTermination = { _ in cancelled.set() }
            let thread = Thread { [self] in
                do {
                    try generate(prompt, options: options, isCancelled: { cancelled.isSet }) { continuation.yield($0) }
                    continuation.finish()
                } catch { continuation.finish(throwing: error) }
            }
            thread.stackSize = 1 << 22
            thread.start()
        }
    }

    /// The same, synchronously: `emit` receives every event in order, the last one `.done`.
    /// `isCancelled` is asked before each token.
    public func generate(
        _ prompt: [Int], options: GenerationOptions, isCancelled: () -> Bool = { false },
        emit: (GenerationEvent) -> Void
    ) throws {
        try checkPrompt(prompt)
        var decoding = Decoding(
            prompt: prompt, options: options, tokenizer: tokenizer, eos: eos,
            context: model.config.context, canDecodePastContext: model.canDecodePastContext)
        let cache = model.makeCache()
        let t0 = Date()
        var logits = decoding.finished == nil ? try model.prefill(prompt: prompt, cache: cache) : []
        let t1 = Date()
        var heldBack = ""
        while decoding.finished == nil {
            if isCancelled() { heldBack = decoding.cancel(); break }
            let d = logits.withUnsafeBufferPointer { decoding.next($0) }
            emit(.token(d))
            if d.stop == nil { logits = model.step(d.id, cache: cache) }
        }
        emit(
            .done(
                GenerationSummary(
                    stopReason: decoding.finished!, promptTokens: prompt.count, generatedTokens: decoding.generated,
                    prefillSeconds: t1.timeIntervalSince(t0), decodeSeconds: Date().timeIntervalSince(t1),
                    seed: options.sampler.seed, cacheBytes: cache.byteCount, heldBackText: heldBack)))
    }
}

/// A flag set from one thread and read from another.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
