import Foundation
import MSGen

// What `msgen serve` makes of a request body (DESIGN §9): bytes → a checked request or an
// APIError, with no sockets and no Hummingbird, so that the handlers (MSServe/Handlers.swift)
// and the fuzz target `http` (Tests/Fuzz) run the same code. Keys are snake_case on the wire
// (decoded converting them); a field the server does not know is ignored, as OpenAI's own
// clients send a few (user, stream_options, …).

// MARK: Errors

// MARK: Errors

/// An error answer: OpenAI's error object {error: {message, type, param, code}} and its status.
public struct APIError: Error, Sendable, Equatable {
    public let status: Int
    public let message: String
    public let type: String
    public let param: String?
    public let code: String?

    public init(status: Int, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status; self.message = message; self.type = type; self.param = param; self.code = code
    }

    public static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }
    public static let unauthorized = APIError(
        status: 401, message: "missing or wrong API key (send 'Authorization: Bearer KEY')",
        type: "invalid_request_error", code: "invalid_api_key")
    public static func notFound(_ path: String) -> APIError {
        APIError(status: 404, message: "no such route: \(path)", type: "invalid_request_error", code: "not_found")
    }
    public static func tooLarge(limit: Int?) -> APIError {
        APIError(
            status: 413, message: "the request body is larger than the limit" + (limit.map { " of \($0) bytes" } ?? ""),
            type: "invalid_request_error", code: "request_too_large")
    }
    public static let overloaded = APIError(
        status: 503, message: "the server is at capacity (all sequences running, the queue full); retry later",
        type: "server_error", code: "overloaded")
    public static let shuttingDown = APIError(status: 503, message: "the server is shutting down", type: "server_error", code: "shutting_down")
    public static func internalError(_ message: String) -> APIError {
        APIError(status: 500, message: message, type: "server_error", code: "internal_error")
    }

}

// MARK: Requests

/// A string, or a list of them (OpenAI's `stop`); `prompt` takes a list of exactly one.
public struct StringOrList: Decodable {
    public let values: [String]
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { values = [s] } else { values = try c.decode([String].self) }
    }
}

/// The sampling and length options that completions and chat share (§6's names and defaults).
public struct CommonOptions: Decodable {
    public var model: String?
    public var maxTokens: Int?
    /// The chat API's newer name for max_tokens.
    public var maxCompletionTokens: Int?
    public var temperature: Float?
    public var topP: Float?
    public var topK: Int?
    public var minP: Float?
    public var repeatPenalty: Float?
    public var seed: UInt64?
    public var stop: StringOrList?
    public var stream: Bool?
    public var n: Int?
    public var frequencyPenalty: Float?
    public var presencePenalty: Float?
    /// llama.cpp's extension: keep generating past the end-of-text token.
    public var ignoreEos: Bool?

    enum CodingKeys: String, CodingKey {
        case model, maxTokens, maxCompletionTokens, temperature, topP, topK, minP, repeatPenalty, seed, stop, stream, n
        case frequencyPenalty, presencePenalty, ignoreEos
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decodeIfPresent(String.self, forKey: .model)
        maxTokens = try c.integer(.maxTokens)
        maxCompletionTokens = try c.integer(.maxCompletionTokens)
        temperature = try c.decodeIfPresent(Float.self, forKey: .temperature)
        topP = try c.decodeIfPresent(Float.self, forKey: .topP)
        topK = try c.integer(.topK)
        minP = try c.decodeIfPresent(Float.self, forKey: .minP)
        repeatPenalty = try c.decodeIfPresent(Float.self, forKey: .repeatPenalty)
        if let s = try c.integer(.seed) {
            guard s >= 0 else { throw APIError.badRequest("'seed' must be ≥ 0", param: "seed") }
            seed = UInt64(s)
        }
        stop = try c.decodeIfPresent(StringOrList.self, forKey: .stop)
        stream = try c.decodeIfPresent(Bool.self, forKey: .stream)
        n = try c.integer(.n)
        frequencyPenalty = try c.decodeIfPresent(Float.self, forKey: .frequencyPenalty)
        presencePenalty = try c.decodeIfPresent(Float.self, forKey: .presencePenalty)
        ignoreEos = try c.decodeIfPresent(Bool.self, forKey: .ignoreEos)
    }
}

extension KeyedDecodingContainer {
    /// An integer field, read as a JSON number so that a negative, fractional or huge
    /// value gets a message naming the field (Foundation reports those as invalid JSON).
    func integer(_ key: Key) throws -> Int? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        let x = try decode(Double.self, forKey: key)
        // Exactly representable integers only (|x| ≤ 2^53).
        guard x == x.rounded(), abs(x) <= 9_007_199_254_740_992 else {
            let name = ServeRequests.snake(key.stringValue)
            throw APIError.badRequest("'\(name)' must be an integer", param: name)
        }
        return Int(x)
    }
}

public struct CompletionRequest: Decodable {
    public let prompt: String
    public let common: CommonOptions
    /// Top-n alternatives per token (OpenAI's legacy completions: an integer).
    public let logprobs: Int?
    public let echo: Bool?

    enum CodingKeys: String, CodingKey { case prompt, logprobs, echo }

    public init(from decoder: Decoder) throws {
        common = try CommonOptions(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let list = try c.decode(StringOrList.self, forKey: .prompt).values
        guard list.count == 1 else {
            throw APIError.badRequest("'prompt' must be a string (or a list of exactly one); batches of prompts are not supported", param: "prompt")
        }
        prompt = list[0]
        logprobs = try c.integer(.logprobs)
        echo = try c.decodeIfPresent(Bool.self, forKey: .echo)
    }
}

public struct ChatMessage: Decodable {
    public let role: String
    public let content: String

    enum CodingKeys: String, CodingKey { case role, content }
    /// A text part of a message whose content is a list of parts.
    struct Part: Decodable { let type: String; let text: String? }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        role = try c.decode(String.self, forKey: .role)
        if let s = try? c.decode(String.self, forKey: .content) {
            content = s
        } else if c.contains(.content), (try? c.decodeNil(forKey: .content)) == true {
            content = ""
        } else {
            let parts = try c.decode([Part].self, forKey: .content)
            guard parts.allSatisfy({ $0.type == "text" }) else {
                throw APIError.badRequest("only text message parts are supported", param: "messages")
            }
            content = parts.compactMap(\.text).joined()
        }
    }
}

public struct ChatRequest: Decodable {
    public let messages: [ChatMessage]
    public let common: CommonOptions
    public let logprobs: Bool?
    public let topLogprobs: Int?

    enum CodingKeys: String, CodingKey { case messages, logprobs, topLogprobs }

    public init(from decoder: Decoder) throws {
        common = try CommonOptions(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        messages = try c.decode([ChatMessage].self, forKey: .messages)
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try c.integer(.topLogprobs)
    }

    /// The prompt the model sees, DESIGN §9's plain template: each message "role: content"
    /// on its own line, then "assistant:".
    public var prompt: String {
        messages.map { "\($0.role): \($0.content)\n" }.joined() + "assistant:"
    }
}

public struct TokenizeRequest: Decodable {
    public let content: String
}

public struct DetokenizeRequest: Decodable {
    public let tokens: [Int]
}

// MARK: Decoding and checks

/// What the checks need to know of the server.
public struct RequestLimits: Sendable {
    public var modelName: String
    public var maxTokensLimit: Int
    public var vocabSize: Int
    public init(modelName: String, maxTokensLimit: Int, vocabSize: Int) {
        self.modelName = modelName; self.maxTokensLimit = maxTokensLimit; self.vocabSize = vocabSize
    }
}

/// A completion or chat request that passed every check: the prompt text (not yet
/// tokenized) and the generation options.
public struct CheckedGeneration: Sendable {
    public let prompt: String
    public let options: GenerationOptions
    public let stream: Bool
    public let chat: Bool
    /// Whether the response carries logprobs (OpenAI's `logprobs` field).
    public var wantsLogprobs: Bool { options.logprobs != nil }
}

/// One function per route body; each throws only APIError.
public enum ServeRequests {
    /// A /v1/completions body.
    public static func completion(_ body: Data, limits: RequestLimits) throws -> CheckedGeneration {
        let r = try decode(CompletionRequest.self, from: body)
        if r.echo == true { throw APIError.badRequest("'echo' is not supported", param: "echo") }
        let top = try checkTopLogprobs(r.logprobs, param: "logprobs")
        return try generation(prompt: r.prompt, common: r.common, logprobs: r.logprobs != nil ? top : nil, chat: false, limits: limits)
    }

    /// A /v1/chat/completions body.
    public static func chat(_ body: Data, limits: RequestLimits) throws -> CheckedGeneration {
        let r = try decode(ChatRequest.self, from: body)
        guard !r.messages.isEmpty else { throw APIError.badRequest("'messages' is empty", param: "messages") }
        let top = try checkTopLogprobs(r.topLogprobs, param: "top_logprobs")
        return try generation(prompt: r.prompt, common: r.common, logprobs: r.logprobs == true ? top : nil, chat: true, limits: limits)
    }

    /// A /tokenize body.
    public static func tokenize(_ body: Data) throws -> TokenizeRequest {
        try decode(TokenizeRequest.self, from: body)
    }

    /// A /detokenize body: every id inside the vocabulary.
    public static func detokenize(_ body: Data, limits: RequestLimits) throws -> DetokenizeRequest {
        let r = try decode(DetokenizeRequest.self, from: body)
        let vocab = limits.vocabSize
        if let bad = r.tokens.first(where: { $0 < 0 || $0 >= vocab }) {
            throw APIError.badRequest("token id \(bad) is outside the vocabulary (0…\(vocab - 1))", param: "tokens")
        }
        return r
    }

    /// The JSON body as `T`: 400 for a body that is not JSON or of the wrong shape.
    static func decode<T: Decodable>(_ type: T.Type, from body: Data) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(T.self, from: body)
        } catch let e as APIError {
            throw e
        } catch let e as DecodingError {
            throw describe(e)
        } catch {
            throw APIError.badRequest("the body is not valid JSON: \(error)")
        }
    }

    /// The options and range checks of a generation request (the same ranges as msgen
    /// generate's options, DESIGN §6).
    static func generation(
        prompt: String, common c: CommonOptions, logprobs: Int?, chat: Bool, limits: RequestLimits
    ) throws -> CheckedGeneration {
        if let model = c.model, !model.isEmpty, model != limits.modelName {
            throw APIError.badRequest("unknown model '\(model)'; this server serves '\(limits.modelName)'", param: "model", code: "model_not_found")
        }
        if let n = c.n, n != 1 { throw APIError.badRequest("only n = 1 is supported", param: "n") }
        for (name, v) in [("frequency_penalty", c.frequencyPenalty), ("presence_penalty", c.presencePenalty)] where (v ?? 0) != 0 {
            throw APIError.badRequest("'\(name)' is not supported (use repeat_penalty)", param: name)
        }
        guard !prompt.isEmpty else { throw APIError.badRequest("the prompt is empty", param: chat ? "messages" : "prompt") }
        var o = GenerationOptions()
        o.maxTokens = c.maxTokens ?? c.maxCompletionTokens ?? o.maxTokens
        try require(o.maxTokens >= 0 && o.maxTokens <= limits.maxTokensLimit, "'max_tokens' must be in 0…\(limits.maxTokensLimit)", "max_tokens")
        o.ignoreEOS = c.ignoreEos ?? false
        o.stop = c.stop?.values ?? []
        try require(o.stop.count <= 16, "at most 16 stop strings", "stop")
        o.logprobs = logprobs
        var s = SamplerOptions()
        s.temperature = c.temperature ?? s.temperature
        s.topK = c.topK ?? s.topK
        s.topP = c.topP ?? s.topP
        s.minP = c.minP ?? s.minP
        s.repeatPenalty = c.repeatPenalty ?? s.repeatPenalty
        try require(s.temperature >= 0 && s.temperature.isFinite, "'temperature' must be ≥ 0", "temperature")
        try require(s.topK >= 0, "'top_k' must be ≥ 0", "top_k")
        try require(s.topP > 0 && s.topP <= 1, "'top_p' must be in (0, 1]", "top_p")
        try require(s.minP >= 0 && s.minP <= 1, "'min_p' must be in [0, 1]", "min_p")
        try require(s.repeatPenalty > 0 && s.repeatPenalty.isFinite, "'repeat_penalty' must be > 0", "repeat_penalty")
        s.seed = c.seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        o.sampler = s
        return CheckedGeneration(prompt: prompt, options: o, stream: c.stream ?? false, chat: chat)
    }

    static func checkTopLogprobs(_ n: Int?, param: String) throws -> Int {
        let n = n ?? 0
        try require(n >= 0 && n <= 20, "'\(param)' must be in 0…20", param)
        return n
    }

    static func require(_ ok: Bool, _ message: String, _ param: String) throws {
        if !ok { throw APIError.badRequest(message, param: param) }
    }

    /// The wire name of a Swift property name ("maxTokens" → "max_tokens").
    static func snake(_ s: String) -> String {
        s.reduce(into: "") { out, ch in if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) } }
    }
    /// One line for what was wrong with a JSON body, naming the field.
    static func describe(_ e: DecodingError) -> APIError {
        // The message names the whole path ("messages[1].content"), param the request's field.
        func field(_ c: DecodingError.Context, _ last: CodingKey? = nil) -> String? {
            (c.codingPath + (last.map { [$0] } ?? [])).first.map { snake($0.stringValue) }
        }
        func path(_ c: DecodingError.Context, _ last: CodingKey? = nil) -> String {
            let keys = c.codingPath + (last.map { [$0] } ?? [])
            return keys.map { $0.intValue.map { "[\($0)]" } ?? snake($0.stringValue) }.joined(separator: ".").replacingOccurrences(
                of: ".[", with: "[")
        }
        switch e {
        case .keyNotFound(let key, let c):
            return .badRequest("missing '\(path(c, key))'", param: field(c, key))
        case .typeMismatch(let type, let c), .valueNotFound(let type, let c):
            return .badRequest("'\(path(c))' must be \(describe(type))", param: field(c))
        case .dataCorrupted(let c) where c.codingPath.isEmpty:
            return .badRequest("the body is not valid JSON (UTF-8)")
        case .dataCorrupted(let c):
            return .badRequest("'\(path(c))' has a bad value: \(c.debugDescription)", param: field(c))
        @unknown default:
            return .badRequest("the body has the wrong shape")
        }
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Bool.Type: return "a boolean"
        case is Int.Type, is UInt64.Type: return "an integer (in range)"
        case is Float.Type, is Double.Type: return "a number"
        case is StringOrList.Type: return "a string or a list of strings"
        default: return "of another type (\(type))"
        }
    }

}
