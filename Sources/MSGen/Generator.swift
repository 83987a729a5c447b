import Foundation
import MSFormat
import MSModels
import MSTokenizer

public struct GenerationOptions: Sendable {
    public var maxTokens = 256
    public var stop: [String] = []
    public var ignoreEOS = false
    public var sampler = SamplerOptions()
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
}

public enum GenerationEvent: Sendable {
    /// One generated token and the text it completes: possibly empty while a UTF-8
    /// character or a possible stop string is still incomplete.
    case token(id: Int, text: String)
    case done(GenerationSummary)
}

/// Streams a continuation of a prompt: prefill in one batched pass, then one token at a
/// time through the model's bounded cache, sampled, detokenized and checked for stops.
public final class Generator: @unchecked Sendable {
    public let model: LanguageModel
    public let tokenizer: BPETokenizer

    public init(model: LanguageModel, tokenizer: BPETokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    var eos: Int? { model.config.eosTokenId ?? tokenizer.eosTokenId }

    /// The prompt's tokens; an empty prompt starts from the end-of-text token.
    public func promptTokens(_ prompt: String) throws -> [Int] {
        var ids = tokenizer.encode(prompt)
        if ids.isEmpty {
            guard let eos else { throw MSGenError("the prompt is empty and the model has no end-of-text token to start from") }
            ids = [eos]
        }
        let n = model.config.context
        try check(ids.count <= n, "the prompt is \(ids.count) tokens, longer than the model's context of \(n)")
        return ids
    }

    /// The continuation as an asynchronous stream of events; cancelling the consuming
    /// task stops generation after the current token.
    public func stream(_ prompt: String, options: GenerationOptions) -> AsyncThrowingStream<GenerationEvent, Error> {
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

    /// The same, synchronously: `emit` receives every event in order.
    public func generate(_ prompt: String, options: GenerationOptions, isCancelled: () -> Bool = { false },
                         emit: (GenerationEvent) -> Void) throws {
        let ids = try promptTokens(prompt)
        var sampler = Sampler(options.sampler)
        var stops = StopFilter(options.stop)
        var detok = StreamingDetokenizer(tokenizer)
        let cache = model.makeCache()
        var history = ids

        let t0 = Date()
        var logits = try model.prefill(ids, cache: cache, logitsFor: (ids.count - 1)..<ids.count)
        let t1 = Date()
        var reason: StopReason?
        var generated = 0
        // Text still held by the detokenizer or the stop filter, once nothing follows.
        func flush() -> String {
            let (text, stopped) = stops.push(detok.finish())
            return stopped ? text : text + stops.finish()
        }
        while reason == nil && generated < options.maxTokens {
            if isCancelled() {
                reason = .cancelled
                let rest = flush()
                if !rest.isEmpty { emit(.token(id: -1, text: rest)) }
                break
            }
            let id = sampler.sample(logits, history: history)
            generated += 1
            history.append(id)
            var text: String
            if id == eos && !options.ignoreEOS {
                reason = .eos
                text = flush()
            } else {
                let (t, stopped) = stops.push(detok.push(id))
                text = t
                if stopped { reason = .stop } else if generated == options.maxTokens { text += flush() }
            }
            if reason == nil && generated < options.maxTokens && !model.canDecodePastContext
                && cache.position >= model.config.context {
                reason = .contextFull
                text += flush()
            }
            emit(.token(id: id, text: text))
            if reason == nil && generated < options.maxTokens { logits = model.step(id, cache: cache) }
        }
        emit(.done(GenerationSummary(
            stopReason: reason ?? .maxTokens, promptTokens: ids.count, generatedTokens: generated,
            prefillSeconds: t1.timeIntervalSince(t0), decodeSeconds: Date().timeIntervalSince(t1),
            seed: options.sampler.seed, cacheBytes: cache.byteCount)))
    }
}

/// Holds back text that could still become a stop string, and cuts the output where one
/// appears (the stop string itself is not printed).
struct StopFilter {
    let stops: [String]
    var pending = ""

    init(_ stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Adds text; returns what is safe to print and whether a stop string was reached.
    mutating func push(_ text: String) -> (String, Bool) {
        pending += text
        guard !stops.isEmpty else { defer { pending = "" }; return (pending, false) }
        let bytes = Array(pending.utf8)
        // The earliest complete stop string ends the output.
        var cut: Int?
        for s in stops {
            if let r = firstIndex(of: Array(s.utf8), in: bytes) { cut = min(cut ?? r, r) }
        }
        if let cut {
            let out = String(decoding: bytes[..<cut], as: UTF8.self)
            pending = ""
            return (out, true)
        }
        // Keep the longest tail that is a prefix of some stop string.
        var keep = 0
        for s in stops {
            let sb = Array(s.utf8)
            for n in stride(from: min(sb.count - 1, bytes.count), to: keep, by: -1)
            where bytes.suffix(n).elementsEqual(sb.prefix(n)) { keep = n; break }
        }
        // Never split a UTF-8 character: stop strings start on character boundaries.
        var split = bytes.count - keep
        while split > 0 && split < bytes.count && (bytes[split] & 0xC0) == 0x80 { split -= 1 }
        let out = String(decoding: bytes[..<split], as: UTF8.self)
        pending = String(decoding: bytes[split...], as: UTF8.self)
        return (out, false)
    }

    mutating func finish() -> String { defer { pending = "" }; return pending }

    private func firstIndex(of needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard needle.count <= hay.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
        return nil
    }
}

/// A flag set from one thread and read from another.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
