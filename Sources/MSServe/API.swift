import Foundation
import MSGen
import MSServeRequests

// The request and response bodies of DESIGN §9, in OpenAI's shapes. Keys are snake_case on
// the wire (requests are decoded converting them, responses spell them out); a field the server does not know is ignored, as OpenAI's
// own clients send a few (user, stream_options, …). The requests, their decoding and their
// checks are in MSServeRequests (no Hummingbird there, so that the fuzz target `http` links them).

extension APIError {
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
    /// Keys are spelled out in each type's CodingKeys: a key strategy would also rewrite
    /// the token strings that key `top_logprobs`' dictionaries.
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return e
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
