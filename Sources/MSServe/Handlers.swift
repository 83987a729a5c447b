import Foundation
import Hummingbird
import MSGen
import MSTokenizer
import NIOCore

/// The route handlers: each reads its request, hands generation to the scheduler and
/// writes OpenAI's shapes back.
struct Handlers: Sendable {
    let engine: Engine

    // MARK: Generation

    func completions(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let body = try await decodeBody(CompletionRequest.self, from: &request)
        if body.echo == true { throw APIError.badRequest("'echo' is not supported", param: "echo") }
        let top = try checkTopLogprobs(body.logprobs, param: "logprobs")
        let job = try makeJob(prompt: body.prompt, common: body.common, topLogprobs: top, wantsLogprobs: body.logprobs != nil, chat: false)
        return try await run(job, request: request)
    }

    func chat(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let body = try await decodeBody(ChatRequest.self, from: &request)
        guard !body.messages.isEmpty else { throw APIError.badRequest("'messages' is empty", param: "messages") }
        let top = try checkTopLogprobs(body.topLogprobs, param: "top_logprobs")
        let job = try makeJob(prompt: body.prompt, common: body.common, topLogprobs: top, wantsLogprobs: body.logprobs == true, chat: true)
        return try await run(job, request: request)
    }

    /// One generation request, checked and tokenized.
    struct Job: Sendable {
        let id: String
        let created: Int
        let prompt: [Int]
        let options: GenerationOptions
        let stream: Bool
        let chat: Bool
        let wantsLogprobs: Bool
    }

    private func makeJob(prompt: String, common c: CommonOptions, topLogprobs: Int, wantsLogprobs: Bool, chat: Bool) throws -> Job {
        if let model = c.model, !model.isEmpty, model != engine.modelName {
            throw APIError.badRequest("unknown model '\(model)'; this server serves '\(engine.modelName)'", param: "model", code: "model_not_found")
        }
        if let n = c.n, n != 1 { throw APIError.badRequest("only n = 1 is supported", param: "n") }
        for (name, v) in [("frequency_penalty", c.frequencyPenalty), ("presence_penalty", c.presencePenalty)] where (v ?? 0) != 0 {
            throw APIError.badRequest("'\(name)' is not supported (use repeat_penalty)", param: name)
        }
        guard !prompt.isEmpty else { throw APIError.badRequest("the prompt is empty", param: chat ? "messages" : "prompt") }
        var o = GenerationOptions()
        o.maxTokens = c.maxTokens ?? c.maxCompletionTokens ?? o.maxTokens
        try require(
            o.maxTokens >= 0 && o.maxTokens <= engine.options.maxTokensLimit,
            "'max_tokens' must be in 0…\(engine.options.maxTokensLimit)", "max_tokens")
        o.ignoreEOS = c.ignoreEos ?? false
        o.stop = c.stop?.values ?? []
        try require(o.stop.count <= 16, "at most 16 stop strings", "stop")
        o.logprobs = topLogprobs
        var s = SamplerOptions()
        s.temperature = c.temperature ?? s.temperature
        s.topK = c.topK ?? s.topK
        s.topP = c.topP ?? s.topP
        s.minP = c.minP ?? s.minP
        s.repeatPenalty = c.repeatPenalty ?? s.repeatPenalty
        // The same ranges as msgen generate's options (DESIGN §6).
        try require(s.temperature >= 0 && s.temperature.isFinite, "'temperature' must be ≥ 0", "temperature")
        try require(s.topK >= 0, "'top_k' must be ≥ 0", "top_k")
        try require(s.topP > 0 && s.topP <= 1, "'top_p' must be in (0, 1]", "top_p")
        try require(s.minP >= 0 && s.minP <= 1, "'min_p' must be in [0, 1]", "min_p")
        try require(s.repeatPenalty > 0 && s.repeatPenalty.isFinite, "'repeat_penalty' must be > 0", "repeat_penalty")
        s.seed = c.seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        o.sampler = s
        let ids = engine.tokenizer.encode(prompt)
        let prefix = chat ? "chatcmpl-" : "cmpl-"
        return Job(
            id: prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24),
            created: Int(Date().timeIntervalSince1970), prompt: ids, options: o,
            stream: c.stream ?? false, chat: chat, wantsLogprobs: wantsLogprobs)
    }

    private func checkTopLogprobs(_ n: Int?, param: String) throws -> Int {
        let n = n ?? 0
        try require(n >= 0 && n <= 20, "'\(param)' must be in 0…20", param)
        return n
    }

    private func run(_ job: Job, request: Request) async throws -> Response {
        let handle = try engine.scheduler.submit(prompt: job.prompt, options: job.options)
        let render = Renderer(job: job, model: engine.modelName, tokenizer: engine.tokenizer)
        if job.stream { return streamed(handle, render: render, request: request) }
        // A client that goes away while it waits cancels its sequence too.
        let result = try await request.body.consumeWithInboundCloseHandler { _ in
            try await collect(handle, render: render)
        } onInboundClosed: {
            handle.cancel()
        }
        var response = json(result)
        response.headers[.connection] = "close"  // as for streams, below
        return response
    }

    /// A whole answer: every event, then one JSON body.
    private func collect(_ handle: SequenceHandle, render: Renderer) async throws -> Data {
        defer { handle.cancel() }
        var all = Renderer.Collected()
        for await event in handle.events {
            switch event {
            case .token(let d): all.add(d, render: render)
            case .end(let reason, let p, let c): return try render.whole(all, reason: reason, usage: Usage(prompt: p, completion: c))
            case .failed(let e): throw e
            }
        }
        throw APIError.shuttingDown  // the sequence ended without a word: cancelled
    }

    /// Server-Sent Events: a chunk per piece of text, a last chunk with finish_reason,
    /// then `data: [DONE]`. A client that disconnects (or stops reading for long enough to
    /// fill its buffer) cancels its sequence.
    private func streamed(_ handle: SequenceHandle, render: Renderer, request: Request) -> Response {
        // Watching for the client's close consumes the connection's input: it cannot carry
        // another request, and the client is told so.
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .connection: "close"]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer { handle.cancel() }
                try await request.body.consumeWithInboundCloseHandler { _ in
                    if let first = try render.opening() { try await writer.write(Self.event(first)) }
                    var offset = 0
                    for await event in handle.events {
                        switch event {
                        case .token(let d):
                            // The last token's text goes out with finish_reason, in `end`'s chunk.
                            if d.stop != nil || (d.text.isEmpty && !render.job.wantsLogprobs) { render.hold(d); continue }
                            try await writer.write(Self.event(try render.chunk(d, offset: offset)))
                            offset += d.text.unicodeScalars.count
                        case .end(let reason, let p, let c):
                            try await writer.write(
                                Self.event(try render.closing(reason: reason, usage: Usage(prompt: p, completion: c), offset: offset)))
                            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                            return
                        case .failed(let e):
                            try await writer.write(Self.event(try Wire.encoder().encode(e.body)))
                            return
                        }
                    }
                } onInboundClosed: {
                    handle.cancel()
                }
                try await writer.finish(nil)
            })
    }

    static func event(_ json: Data) -> ByteBuffer {
        var b = ByteBuffer(string: "data: ")
        b.writeBytes(json)
        b.writeString("\n\n")
        return b
    }

    // MARK: Other routes

    func models(_ request: Request, context: BasicRequestContext) async throws -> Response {
        json(try Wire.encoder().encode(ModelList(data: [ModelEntry(id: engine.modelName, created: engine.created)])))
    }

    func model(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard context.parameters.get("id") == engine.modelName else {
            throw APIError(
                status: 404, message: "no model '\(context.parameters.get("id") ?? "")'", type: "invalid_request_error", param: "model",
                code: "model_not_found")
        }
        return json(try Wire.encoder().encode(ModelEntry(id: engine.modelName, created: engine.created)))
    }

    /// 200 while serving; 503 once shutting down, so that a load balancer stops sending.
    func health(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let up = engine.scheduler.isAccepting
        var r = json(try Wire.encoder().encode(HealthResponse(status: up ? "ok" : "shutting down", model: engine.modelName)))
        if !up { r.status = .serviceUnavailable }
        return r
    }

    func metrics(_ request: Request, context: BasicRequestContext) async throws -> Response {
        Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: engine.metrics.render())))
    }

    func tokenize(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let body = try await decodeBody(TokenizeRequest.self, from: &request)
        let ids = engine.tokenizer.encode(body.content)
        let pieces = ids.map { String(decoding: engine.tokenizer.tokenBytes($0), as: UTF8.self) }
        return json(try Wire.encoder().encode(TokenizeResponse(tokens: ids, pieces: pieces)))
    }

    func detokenize(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let body = try await decodeBody(DetokenizeRequest.self, from: &request)
        let vocab = engine.tokenizer.vocabSize
        if let bad = body.tokens.first(where: { $0 < 0 || $0 >= vocab }) {
            throw APIError.badRequest("token id \(bad) is outside the vocabulary (0…\(vocab - 1))", param: "tokens")
        }
        let text = String(decoding: engine.tokenizer.decode(body.tokens, skipSpecial: true), as: UTF8.self)
        return json(try Wire.encoder().encode(DetokenizeResponse(content: text)))
    }

    // MARK: Helpers

    /// The request's JSON body, at most `maxBodyBytes`: 413 past that, 400 for a body that
    /// is cut short, not JSON, or of the wrong shape.
    private func decodeBody<T: Decodable>(_ type: T.Type, from request: inout Request) async throws -> T {
        let limit = engine.options.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit { throw APIError.tooLarge(limit: limit) }
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIError.tooLarge(limit: limit)
        } catch let e as HTTPError where e.status == .contentTooLarge {
            throw APIError.tooLarge(limit: limit)
        } catch {
            throw APIError.badRequest("the request body could not be read: \(error)")
        }
        do {
            return try Wire.decoder().decode(T.self, from: Data(buffer: buffer))
        } catch let e as APIError {
            throw e
        } catch let e as DecodingError {
            throw Self.describe(e)
        } catch {
            throw APIError.badRequest("the body is not valid JSON: \(error)")
        }
    }

    /// One line for what was wrong with a JSON body, naming the field.
    static func describe(_ e: DecodingError) -> APIError {
        // The message names the whole path ("messages[1].content"), param the request's field.
        func field(_ c: DecodingError.Context, _ last: CodingKey? = nil) -> String? {
            (c.codingPath + (last.map { [$0] } ?? [])).first.map { Wire.snake($0.stringValue) }
        }
        func path(_ c: DecodingError.Context, _ last: CodingKey? = nil) -> String {
            let keys = c.codingPath + (last.map { [$0] } ?? [])
            return keys.map { $0.intValue.map { "[\($0)]" } ?? Wire.snake($0.stringValue) }.joined(separator: ".").replacingOccurrences(
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

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Bool.Type: return "a boolean"
        case is Int.Type, is UInt64.Type: return "an integer (in range)"
        case is Float.Type, is Double.Type: return "a number"
        case is StringOrList.Type: return "a string or a list of strings"
        default: return "of another type (\(type))"
        }
    }

    private func json(_ data: Data) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

private func require(_ ok: Bool, _ message: String, _ param: String) throws {
    if !ok { throw APIError.badRequest(message, param: param) }
}
