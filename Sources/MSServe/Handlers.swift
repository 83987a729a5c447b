import Foundation
import Hummingbird
import MSGen
import MSServeRequests
import MSTokenizer
import NIOCore

/// The route handlers: each reads its request, hands generation to the scheduler and
/// writes OpenAI's shapes back.
struct Handlers: Sendable {
    let engine: Engine

    // MARK: Generation

    func completions(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let checked = try ServeRequests.completion(try await readBody(&request), limits: limits)
        return try await run(makeJob(checked), request: request)
    }

    func chat(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let checked = try ServeRequests.chat(try await readBody(&request), limits: limits)
        return try await run(makeJob(checked), request: request)
    }

    /// What the request checks need to know of this server.
    private var limits: RequestLimits {
        RequestLimits(modelName: engine.modelName, maxTokensLimit: engine.options.maxTokensLimit, vocabSize: engine.tokenizer.vocabSize)
    }

    /// One generation request, checked and tokenized.
    struct Job: Sendable {
        let id: String
        let created: Int
        let prompt: [Int]
        let options: GenerationOptions
        let stream: Bool
        let chat: Bool
        var wantsLogprobs: Bool { options.logprobs != nil }
    }

    /// A checked request, tokenized and named.
    private func makeJob(_ g: CheckedGeneration) -> Job {
        let ids = engine.tokenizer.encode(g.prompt)
        let prefix = g.chat ? "chatcmpl-" : "cmpl-"
        return Job(
            id: prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24),
            created: Int(Date().timeIntervalSince1970), prompt: ids, options: g.options,
            stream: g.stream, chat: g.chat)
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
        let body = try ServeRequests.tokenize(try await readBody(&request))
        let ids = engine.tokenizer.encode(body.content)
        let pieces = ids.map { String(decoding: engine.tokenizer.tokenBytes($0), as: UTF8.self) }
        return json(try Wire.encoder().encode(TokenizeResponse(tokens: ids, pieces: pieces)))
    }

    func detokenize(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let body = try ServeRequests.detokenize(try await readBody(&request), limits: limits)
        let text = String(decoding: engine.tokenizer.decode(body.tokens, skipSpecial: true), as: UTF8.self)
        return json(try Wire.encoder().encode(DetokenizeResponse(content: text)))
    }

    // MARK: Helpers

    /// The request's body, at most `maxBodyBytes`: 413 past that, 400 for a body that is
    /// cut short. ServeRequests decodes and checks it.
    private func readBody(_ request: inout Request) async throws -> Data {
        let limit = engine.options.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit { throw APIError.tooLarge(limit: limit) }
        do {
            return Data(buffer: try await request.collectBody(upTo: limit))
        } catch is NIOTooManyBytesError {
            throw APIError.tooLarge(limit: limit)
        } catch let e as HTTPError where e.status == .contentTooLarge {
            throw APIError.tooLarge(limit: limit)
        } catch {
            throw APIError.badRequest("the request body could not be read: \(error)")
        }
    }

    private func json(_ data: Data) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
