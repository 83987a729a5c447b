import Foundation
import MSGen
import MSTokenizer

/// Writes one request's answer in its API's shape (completions or chat), whole or as
/// stream chunks. One per request, used by one task at a time.
final class Renderer: @unchecked Sendable {
    let job: Handlers.Job
    let model: String
    let tokenizer: BPETokenizer
    /// One encoder for all of the request's chunks (not one per token).
    private let encoder = Wire.encoder()
    /// Tokens whose text waits for the next chunk (the last token goes out with
    /// finish_reason; tokens that complete no character yet wait for one that does).
    private var held = Collected()

    init(job: Handlers.Job, model: String, tokenizer: BPETokenizer) {
        self.job = job; self.model = model; self.tokenizer = tokenizer
    }

    /// Text and logprobs gathered over some tokens.
    struct Collected {
        var text = ""
        var completion = CompletionLogprobs()
        var chat = ChatLogprobs()
        var isEmpty: Bool { text.isEmpty && completion.tokens.isEmpty }

        mutating func add(_ d: Decoded, render: Renderer, offset: Int? = nil) {
            if let logprob = d.logprob {
                let bytes = render.tokenizer.tokenBytes(d.id)
                let token = String(decoding: bytes, as: UTF8.self)
                completion.tokens.append(token)
                completion.tokenLogprobs.append(finite(logprob))
                completion.topLogprobs.append(Dictionary(d.top.map { (render.piece($0.id), finite($0.logprob)) }, uniquingKeysWith: max))
                completion.textOffset.append((offset ?? 0) + text.unicodeScalars.count)
                chat.content.append(
                    ChatTokenLogprob(
                        token: token, logprob: finite(logprob), bytes: bytes,
                        topLogprobs: d.top.map {
                            ChatTopLogprob(token: render.piece($0.id), logprob: finite($0.logprob), bytes: render.tokenizer.tokenBytes($0.id))
                        }))
            }
            text += d.text
        }
    }

    func piece(_ id: Int) -> String { String(decoding: tokenizer.tokenBytes(id), as: UTF8.self) }

    // MARK: Whole answers

    func whole(_ c: Collected, reason: StopReason, usage: Usage) throws -> Data {
        let finish = Wire.finishReason(reason)
        if job.chat {
            return try encoder.encode(
                ChatResponse(
                    id: job.id, created: job.created, model: model,
                    choices: [
                        ChatChoice(
                            index: 0, message: ChatMessageOut(content: c.text), logprobs: job.wantsLogprobs ? c.chat : nil, finishReason: finish)
                    ],
                    usage: usage, seed: job.options.sampler.seed))
        }
        return try encoder.encode(
            CompletionResponse(
                id: job.id, created: job.created, model: model,
                choices: [CompletionChoice(index: 0, text: c.text, logprobs: job.wantsLogprobs ? c.completion : nil, finishReason: finish)],
                usage: usage, seed: job.options.sampler.seed))
    }

    // MARK: Stream chunks

    /// The chunk before any text: chat announces the assistant's role; completions nothing.
    func opening() throws -> Data? {
        guard job.chat else { return nil }
        return try chunk(Collected(), role: "assistant", finish: nil, usage: nil)
    }

    func hold(_ d: Decoded) { held.add(d, render: self) }

    /// A chunk with this token's text (and any held before it).
    func chunk(_ d: Decoded, offset: Int) throws -> Data {
        var c = held
        held = Collected()
        c.add(d, render: self, offset: offset)
        return try chunk(c, role: nil, finish: nil, usage: nil)
    }

    /// The last chunk: held text, finish_reason and usage.
    func closing(reason: StopReason, usage: Usage, offset: Int) throws -> Data {
        defer { held = Collected() }
        return try chunk(held, role: nil, finish: Wire.finishReason(reason), usage: usage)
    }

    private func chunk(_ c: Collected, role: String?, finish: String?, usage: Usage?) throws -> Data {
        let seed = job.options.sampler.seed
        if job.chat {
            let delta = ChatDelta(role: role, content: role != nil ? "" : (c.text.isEmpty && finish != nil ? nil : c.text))
            return try encoder.encode(
                ChatChunk(
                    id: job.id, created: job.created, model: model,
                    choices: [
                        ChatChunkChoice(index: 0, delta: delta, logprobs: job.wantsLogprobs && role == nil ? c.chat : nil, finishReason: finish)
                    ],
                    usage: usage, seed: seed))
        }
        return try encoder.encode(
            CompletionResponse(
                id: job.id, created: job.created, model: model,
                choices: [CompletionChoice(index: 0, text: c.text, logprobs: job.wantsLogprobs ? c.completion : nil, finishReason: finish)],
                usage: usage, seed: seed))
    }
}

/// JSON has no infinities: a probability that underflowed reports the lowest float.
private func finite(_ x: Float) -> Float { x.isFinite ? x : -Float.greatestFiniteMagnitude }
