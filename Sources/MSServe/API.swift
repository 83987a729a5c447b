import Foundation
import MSGen

// The request and response bodies of DESIGN §9, in OpenAI's shapes. Keys are snake_case on
// the wire (requests are decoded converting them, responses spell them out); a field the server does not know is ignored, as OpenAI's
// own clients send a few (user, stream_options, …).

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

    static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }
    static let unauthorized = APIError(
        status: 401, message: "missing or wrong API key (send 'Authorization: Bearer KEY')",
        type: "invalid_request_error", code: "invalid_api_key")
    static func notFound(_ path: String) -> APIError {
        APIError(status: 404, message: "no such route: \(path)", type: "invalid_request_error", code: "not_found")
    }
    static func tooLarge(limit: Int?) -> APIError {
        APIError(
            status: 413, message: "the request body is larger than the limit" + (limit.map { " of \($0) bytes" } ?? ""),
            type: "invalid_request_error", code: "request_too_large")
    }
    static let overloaded = APIError(
        status: 503, message: "the server is at capacity (all sequences running, the queue full); retry later",
        type: "server_error", code: "overloaded")
    static let shuttingDown = APIError(status: 503, message: "the server is shutting down", type: "server_error", code: "shutting_down")
    static func internalError(_ message: String) -> APIError {
        APIError(status: 500, message: message, type: "server_error", code: "internal_error")
    }

    /// The JSON body.
    var body: ErrorBody { ErrorBody(error: .init(message: message, type: type, param: param, code: code)) }
}

struct ErrorBody: Codable {
    struct Detail: Codable {
        let message: String
        let type: String
        let param: String?
        let code: String?
        // OpenAI sends param and code as null when unset, not missing.
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(message, forKey: .message); try c.encode(type, forKey: .type)
            try c.encode(param, forKey: .param); try c.encode(code, forKey: .code)
        }
    }
    let error: Detail
}

// MARK: Requests

/// A string, or a list of them (OpenAI's `stop`); `prompt` takes a list of exactly one.
struct StringOrList: Decodable {
    let values: [String]
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { values = [s] } else { values = try c.decode([String].self) }
    }
}

/// The sampling and length options that completions and chat share (§6's names and defaults).
struct CommonOptions: Decodable {
    var model: String?
    var maxTokens: Int?
    /// The chat API's newer name for max_tokens.
    var maxCompletionTokens: Int?
    var temperature: Float?
    var topP: Float?
    var topK: Int?
    var minP: Float?
    var repeatPenalty: Float?
    var seed: UInt64?
    var stop: StringOrList?
    var stream: Bool?
    var n: Int?
    var frequencyPenalty: Float?
    var presencePenalty: Float?
    /// llama.cpp's extension: keep generating past the end-of-text token.
    var ignoreEos: Bool?

    enum CodingKeys: String, CodingKey {
        case model, maxTokens, maxCompletionTokens, temperature, topP, topK, minP, repeatPenalty, seed, stop, stream, n
        case frequencyPenalty, presencePenalty, ignoreEos
    }

    init(from decoder: Decoder) throws {
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
            let name = Wire.snake(key.stringValue)
            throw APIError.badRequest("'\(name)' must be an integer", param: name)
        }
        return Int(x)
    }
}

struct CompletionRequest: Decodable {
    let prompt: String
    let common: CommonOptions
    /// Top-n alternatives per token (OpenAI's legacy completions: an integer).
    let logprobs: Int?
    let echo: Bool?

    enum CodingKeys: String, CodingKey { case prompt, logprobs, echo }

    init(from decoder: Decoder) throws {
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

struct ChatMessage: Decodable {
    let role: String
    let content: String

    enum CodingKeys: String, CodingKey { case role, content }
    /// A text part of a message whose content is a list of parts.
    struct Part: Decodable { let type: String; let text: String? }

    init(from decoder: Decoder) throws {
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

struct ChatRequest: Decodable {
    let messages: [ChatMessage]
    let common: CommonOptions
    let logprobs: Bool?
    let topLogprobs: Int?

    enum CodingKeys: String, CodingKey { case messages, logprobs, topLogprobs }

    init(from decoder: Decoder) throws {
        common = try CommonOptions(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        messages = try c.decode([ChatMessage].self, forKey: .messages)
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try c.integer(.topLogprobs)
    }

    /// The prompt the model sees, DESIGN §9's plain template: each message "role: content"
    /// on its own line, then "assistant:".
    var prompt: String {
        messages.map { "\($0.role): \($0.content)\n" }.joined() + "assistant:"
    }
}

struct TokenizeRequest: Decodable {
    let content: String
}

struct DetokenizeRequest: Decodable {
    let tokens: [Int]
}

// MARK: Responses

struct Usage: Codable, Equatable {
    let promptTokens: Int
    let completionTokens: Int
    let totalTokens: Int
    enum CodingKeys: String, CodingKey { case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens" }
    init(prompt: Int, completion: Int) { promptTokens = prompt; completionTokens = completion; totalTokens = prompt + completion }
}

/// The legacy completions logprobs object: parallel lists, one entry per token.
struct CompletionLogprobs: Codable, Equatable {
    var tokens: [String] = []
    var tokenLogprobs: [Float] = []
    var topLogprobs: [[String: Float]] = []
    var textOffset: [Int] = []
    enum CodingKeys: String, CodingKey { case tokens, tokenLogprobs = "token_logprobs", topLogprobs = "top_logprobs", textOffset = "text_offset" }
}

struct CompletionChoice: Codable {
    let index: Int
    let text: String
    let logprobs: CompletionLogprobs?
    let finishReason: String?

    enum CodingKeys: String, CodingKey { case index, text, logprobs, finishReason = "finish_reason" }
    // OpenAI sends logprobs and finish_reason as null when unset.
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index); try c.encode(text, forKey: .text)
        try c.encode(logprobs, forKey: .logprobs); try c.encode(finishReason, forKey: .finishReason)
    }
}

/// A completion, or (object "text_completion" too, as OpenAI does) one streamed chunk of it.
struct CompletionResponse: Codable {
    let id: String
    var object = "text_completion"
    let created: Int
    let model: String
    let choices: [CompletionChoice]
    let usage: Usage?
    let seed: UInt64
}

struct ChatTopLogprob: Codable, Equatable {
    let token: String
    let logprob: Float
    let bytes: [UInt8]
}

struct ChatTokenLogprob: Codable, Equatable {
    let token: String
    let logprob: Float
    let bytes: [UInt8]
    let topLogprobs: [ChatTopLogprob]
    enum CodingKeys: String, CodingKey { case token, logprob, bytes, topLogprobs = "top_logprobs" }
}

struct ChatLogprobs: Codable, Equatable {
    var content: [ChatTokenLogprob] = []
}

struct ChatMessageOut: Codable {
    var role = "assistant"
    let content: String
}

struct ChatChoice: Codable {
    let index: Int
    let message: ChatMessageOut
    let logprobs: ChatLogprobs?
    let finishReason: String?

    enum CodingKeys: String, CodingKey { case index, message, logprobs, finishReason = "finish_reason" }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index); try c.encode(message, forKey: .message)
        try c.encode(logprobs, forKey: .logprobs); try c.encode(finishReason, forKey: .finishReason)
    }
}

struct ChatResponse: Codable {
    let id: String
    var object = "chat.completion"
    let created: Int
    let model: String
    let choices: [ChatChoice]
    let usage: Usage
    let seed: UInt64
}

struct ChatDelta: Codable {
    var role: String?
    var content: String?
}

struct ChatChunkChoice: Codable {
    let index: Int
    let delta: ChatDelta
    let logprobs: ChatLogprobs?
    let finishReason: String?

    enum CodingKeys: String, CodingKey { case index, delta, logprobs, finishReason = "finish_reason" }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index); try c.encode(delta, forKey: .delta)
        try c.encode(logprobs, forKey: .logprobs); try c.encode(finishReason, forKey: .finishReason)
    }
}

struct ChatChunk: Codable {
    let id: String
    var object = "chat.completion.chunk"
    let created: Int
    let model: String
    let choices: [ChatChunkChoice]
    let usage: Usage?
    let seed: UInt64
}

struct ModelEntry: Codable {
    let id: String
    var object = "model"
    let created: Int
    var ownedBy = "msgen"
    enum CodingKeys: String, CodingKey { case id, object, created, ownedBy = "owned_by" }
}

struct ModelList: Codable {
    var object = "list"
    let data: [ModelEntry]
}

struct TokenizeResponse: Codable {
    let tokens: [Int]
    /// Each token's text (its bytes, an unfinished UTF-8 character shown as U+FFFD).
    let pieces: [String]
}

struct DetokenizeResponse: Codable {
    let content: String
}

struct HealthResponse: Codable {
    let status: String
    let model: String
}

// MARK: Coders

enum Wire {
    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    /// Keys are spelled out in each type's CodingKeys: a key strategy would also rewrite
    /// the token strings that key `top_logprobs`' dictionaries.
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return e
    }

    /// The wire name of a Swift property name ("maxTokens" → "max_tokens").
    static func snake(_ s: String) -> String {
        s.reduce(into: "") { out, ch in if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) } }
    }

    /// OpenAI's finish_reason for a stop reason (both "the model ended" and "a stop string
    /// appeared" are "stop"; out of budget or of context is "length").
    static func finishReason(_ r: StopReason) -> String? {
        switch r {
        case .eos, .stop: return "stop"
        case .maxTokens, .contextFull: return "length"
        case .cancelled: return nil
        }
    }
}
