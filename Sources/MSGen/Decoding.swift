import Foundation
import MSFormat
import MSKernels
import MSTokenizer

/// A token and its log-probability under the model.
public struct TokenLogprob: Sendable, Equatable {
    public let id: Int
    public let logprob: Float
    public init(id: Int, logprob: Float) { self.id = id; self.logprob = logprob }
}

/// What one call of `Decoding.next` gives: the sampled token and what to do with it.
public struct Decoded: Sendable {
    public let id: Int
    /// The text to print now: possibly "" while a UTF-8 character or a possible stop
    /// string is incomplete; when `stop` is set it includes everything held back that
    /// should be printed (and nothing from a stop string on).
    public let text: String
    /// The token's own text, never held back for a stop string (only the bytes of an
    /// unfinished UTF-8 character wait for the next piece). All pieces of a sequence
    /// concatenate to the decoding of its tokens, stop strings included.
    public let piece: String
    /// log p(id) under the model's next-token distribution (the softmax of the logits
    /// before penalty, truncation and temperature); nil when `options.logprobs` is nil.
    public let logprob: Float?
    /// The `options.logprobs` most likely tokens with their log-probabilities, best first
    /// (ties towards the lower id); empty when it is 0 or nil.
    public let top: [TokenLogprob]
    /// Set when this token ends the sequence; the token is then not fed to the model.
    public let stop: StopReason?
}

/// One sequence's decoding state apart from the model: sampler, repeat history, stop
/// strings, streaming detokenizer, token budget, context limit. It decides the stop
/// reason in one place. A driver (the `Generator`, or a server that batches the model
/// calls of many sequences) prefills the prompt, then repeats: `next(logits)`, and unless
/// the result has `stop`, feeds its id to the model for the next logits.
public struct Decoding: Sendable {
    public let options: GenerationOptions
    /// Tokens in the prompt (already in the model's cache when `next` is first called).
    public let promptCount: Int
    /// Tokens sampled so far.
    public private(set) var generated = 0
    /// Why the sequence ended, once it has; set at the start when `maxTokens` is 0.
    public private(set) var finished: StopReason?

    let eos: Int?
    let context: Int
    let canDecodePastContext: Bool
    var sampler: Sampler
    var stops: StopFilter
    var detokenizer: StreamingDetokenizer
    /// The last tokens (prompt included) the repeat penalty looks at.
    var history: [Int]

    public init(prompt: [Int], options: GenerationOptions, tokenizer: BPETokenizer, eos: Int?, context: Int, canDecodePastContext: Bool) {
        self.options = options
        promptCount = prompt.count
        self.eos = options.ignoreEOS ? nil : eos
        self.context = context
        self.canDecodePastContext = canDecodePastContext
        sampler = Sampler(options.sampler)
        stops = StopFilter(options.stop)
        detokenizer = StreamingDetokenizer(tokenizer)
        history = Array(prompt.suffix(max(options.sampler.repeatLastN, 0)))
        if options.maxTokens <= 0 { finished = .maxTokens }
    }

    /// Refuses a prompt the model cannot take: the one place that decides it. A model that
    /// `canDecodePastContext` (CST) takes a prompt of any length, prefilled in chunks
    /// through its rolling cache; the others (the baseline) at most their context.
    public static func checkPrompt(count: Int, context: Int, canDecodePastContext: Bool) throws {
        try check(count >= 1, "the prompt has no tokens")
        try check(count <= context || canDecodePastContext, "the prompt is \(count) tokens, longer than the model's context of \(context)")
    }

    /// Samples the next token from these logits (vocabulary floats).
    public mutating func next(_ logits: UnsafeBufferPointer<Float>) -> Decoded {
        precondition(finished == nil, "Decoding.next after the sequence ended")
        let id = sampler.sample(logits, history: history)
        generated += 1
        remember(id)
        let scored = options.logprobs.map { Decoding.logprobs(logits, of: id, top: $0) }

        var piece = detokenizer.push(id)
        var (text, stopped) = stops.push(piece)
        let reason: StopReason? =
            id == eos
            ? .eos
            : stopped
                ? .stop
                : generated >= options.maxTokens
                    ? .maxTokens
                    // The model cannot take this token: the cache already holds `context`.
                    : !canDecodePastContext && promptCount + generated > context
                        ? .contextFull
                        : nil
        if let reason {
            finished = reason
            if reason != .stop {
                let rest = detokenizer.finish()
                piece += rest
                text += flush(rest)
            }
        }
        return Decoded(id: id, text: text, piece: piece, logprob: scored?.0, top: scored?.1 ?? [], stop: reason)
    }

    /// Ends the sequence early (cancelled): returns the text still held back.
    public mutating func cancel() -> String {
        guard finished == nil else { return "" }
        finished = .cancelled
        return flush(detokenizer.finish())
    }

    /// The last text pushed through the stop filter, then whatever it still holds.
    private mutating func flush(_ last: String) -> String {
        let (text, stopped) = stops.push(last)
        return stopped ? text : text + stops.finish()
    }

    private mutating func remember(_ id: Int) {
        let n = max(options.sampler.repeatLastN, 0)
        history.append(id)
        // Trimmed in batches, so that a long generation does not shift the array every token.
        if history.count > 2 * n + 64 { history.removeFirst(history.count - n) }
    }

    /// log p(id) and the `n` most likely tokens, from the log-softmax of the raw logits.
    static func logprobs(_ logits: UnsafeBufferPointer<Float>, of id: Int, top n: Int) -> (Float, [TokenLogprob]) {
        let lse = Kernels.logSumExp(logits.baseAddress!, count: logits.count)
        let lp = { (i: Int) in Float(Double(logits[i]) - lse) }
        guard n > 0 else { return (lp(id), []) }
        let best = Sampler.largest(n, of: logits)
        return (lp(id), best.map { TokenLogprob(id: $0, logprob: lp($0)) })
    }
}

/// Holds back text that could still become a stop string, and cuts the output where one
/// appears (the stop string itself is not printed).
struct StopFilter: Sendable {
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
