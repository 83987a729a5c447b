import Foundation
import Hummingbird
import HummingbirdTesting
import MSGen
import NIOCore
import Testing

@testable import MSServe

/// POSTs a JSON body through the router (no sockets) and returns status and body.
func post(_ client: some TestClientProtocol, _ path: String, _ body: Data, headers: HTTPFields = [.contentType: "application/json"]) async throws
    -> (status: Int, body: Data, headers: HTTPFields)
{
    recordFuzzSeed(path, body)
    return try await client.execute(uri: path, method: .post, headers: headers, body: ByteBuffer(bytes: body)) { r in
        (Int(r.status.code), Data(buffer: r.body), r.headers)
    }
}

func post(_ client: some TestClientProtocol, _ path: String, _ object: [String: Any]) async throws -> (status: Int, body: Data, headers: HTTPFields) {
    try await post(client, path, jsonBody(object))
}

/// With MSGEN_FUZZ_SEEDS=DIR (tools/fuzz.sh's seeds for the `http` target), each body
/// posted is also written to DIR behind one byte naming its route, as FuzzTarget.http reads it.
func recordFuzzSeed(_ path: String, _ body: Data) {
    guard let dir = ProcessInfo.processInfo.environment["MSGEN_FUZZ_SEEDS"],
        let route = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"].firstIndex(of: path)
    else { return }
    let name = "\(route)-" + String(UInt64(truncatingIfNeeded: (Data([UInt8(route)]) + body).hashValue), radix: 16)
    FileManager.default.createFile(atPath: dir + "/" + name, contents: Data([UInt8(route)]) + body)
}

/// The text msgen's single-sequence Generator gives for this prompt and options: what the
/// server must give whatever else runs.
func referenceText(_ g: Generator, _ prompt: String, _ o: GenerationOptions) throws -> (text: String, ids: [Int]) {
    var text = "", ids: [Int] = []
    try g.generate(g.tokenizer.encode(prompt), options: o) { e in
        if case .token(let d) = e { text += d.text; ids.append(d.id) }
    }
    return (text, ids)
}

func options(seed: UInt64, maxTokens: Int, ignoreEOS: Bool = true) -> GenerationOptions {
    var o = GenerationOptions()
    o.sampler.seed = seed; o.maxTokens = maxTokens; o.ignoreEOS = ignoreEOS
    return o
}

/// Checks an OpenAI error object and returns its message.
@discardableResult
func expectError(
    _ r: (status: Int, body: Data, headers: HTTPFields), _ status: Int, param: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
) throws -> String {
    #expect(r.status == status, "\(String(decoding: r.body, as: UTF8.self))", sourceLocation: sourceLocation)
    let e = try #require(try json(r.body)["error"] as? [String: Any], sourceLocation: sourceLocation)
    let message = try #require(e["message"] as? String, sourceLocation: sourceLocation)
    #expect(!message.isEmpty && e["type"] is String && e.keys.contains("code") && e.keys.contains("param"), sourceLocation: sourceLocation)
    if let param { #expect(e["param"] as? String == param, "\(message)", sourceLocation: sourceLocation) }
    return message
}

struct RouteTests {
    @Test func modelsHealthTokenizeDetokenize() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.router) { client in
            let models = try await client.execute(uri: "/v1/models", method: .get) { try json(Data(buffer: $0.body)) }
            let data = try #require(models["data"] as? [[String: Any]])
            #expect(
                models["object"] as? String == "list" && data.count == 1 && data[0]["id"] as? String == "fixture"
                    && data[0]["object"] as? String == "model")
            #expect(try await client.execute(uri: "/v1/models/fixture", method: .get) { $0.status } == .ok)
            #expect(try await client.execute(uri: "/v1/models/other", method: .get) { $0.status } == .notFound)

            let health = try await client.execute(uri: "/health", method: .get) { ($0.status, try json(Data(buffer: $0.body))) }
            #expect(health.0 == .ok && health.1["status"] as? String == "ok")

            let text = "In the beginning, café ☃"
            let t = try json(try await post(client, "/tokenize", ["content": text]).body)
            let ids = try #require(t["tokens"] as? [Int])
            #expect(ids == engine.tokenizer.encode(text) && (t["pieces"] as? [String])?.count == ids.count)
            let d = try json(try await post(client, "/detokenize", ["tokens": ids]).body)
            #expect(d["content"] as? String == text)
            try expectError(try await post(client, "/detokenize", ["tokens": [1, 100_000]]), 400, param: "tokens")
            try expectError(try await post(client, "/tokenize", ["text": "no content key"]), 400, param: "content")

            let metrics = try await client.execute(uri: "/metrics", method: .get) { String(buffer: $0.body) }
            for name in [
                "msgen_requests_total", "msgen_active_sequences", "msgen_queued_sequences", "msgen_cache_bytes", "msgen_prompt_tokens_total",
                "msgen_completion_tokens_total", "msgen_step_batch_size",
            ] {
                #expect(metrics.contains(name), "\(name) missing from /metrics")
            }
            #expect(metrics.contains("msgen_requests_total{status=\"200\"}") && metrics.contains("msgen_requests_total{status=\"404\"}"))
        }
    }

    /// CST and the baseline.
    static let fixtures = ["cst_a3_shared_untied_gelutanh_full", baselineFixture]

    @Test(arguments: fixtures)
    func completionMatchesTheGeneratorAndReportsItsSeed(fixture: String) async throws {
        let engine = try fixtureEngine(fixture)
        let prompt = "And God said"
        let expected = try referenceText(engine.generator, prompt, options(seed: 42, maxTokens: 20))
        try await makeApplication(engine).test(.router) { client in
            let r = try await post(
                client, "/v1/completions", ["prompt": prompt, "max_tokens": 20, "seed": 42, "ignore_eos": true, "model": "fixture"])
            #expect(r.status == 200)
            let o = try json(r.body)
            #expect(o["object"] as? String == "text_completion" && (o["id"] as? String)?.hasPrefix("cmpl-") == true && o["created"] is Int)
            #expect(o["model"] as? String == "fixture" && o["seed"] as? Int == 42)
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == expected.text && choice["finish_reason"] as? String == "length" && choice["index"] as? Int == 0)
            #expect(choice.keys.contains("logprobs"))
            let usage = try #require(o["usage"] as? [String: Int])
            #expect(
                usage == [
                    "prompt_tokens": engine.tokenizer.encode(prompt).count, "completion_tokens": 20,
                    "total_tokens": engine.tokenizer.encode(prompt).count + 20,
                ])

            // No seed given: the server picks one and reports it; sending it back repeats the text.
            let a = try json(try await post(client, "/v1/completions", ["prompt": prompt, "max_tokens": 20, "ignore_eos": true]).body)
            let seed = try #require(a["seed"] as? Int)
            let b = try json(try await post(client, "/v1/completions", ["prompt": prompt, "max_tokens": 20, "ignore_eos": true, "seed": seed]).body)
            #expect(((a["choices"] as? [[String: Any]])?[0]["text"] as? String) == ((b["choices"] as? [[String: Any]])?[0]["text"] as? String))
        }
    }

    @Test func stopStringsCutTheText() async throws {
        let engine = try fixtureEngine()
        let free = try referenceText(engine.generator, "The", options(seed: 7, maxTokens: 60))
        // A stop string taken from the middle of the free text cuts it there.
        let stop = String(free.text.dropFirst(10).prefix(3))
        var o = options(seed: 7, maxTokens: 60); o.stop = [stop]
        let cut = try referenceText(engine.generator, "The", o)
        #expect(!cut.text.contains(stop) && free.text.hasPrefix(cut.text))
        try await makeApplication(engine).test(.router) { client in
            let r = try json(
                try await post(client, "/v1/completions", ["prompt": "The", "max_tokens": 60, "seed": 7, "ignore_eos": true, "stop": stop]).body)
            let choice = try #require((r["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == cut.text && choice["finish_reason"] as? String == "stop")
            let list = try json(
                try await post(
                    client, "/v1/completions", ["prompt": "The", "max_tokens": 60, "seed": 7, "ignore_eos": true, "stop": [stop, "\u{1}"]]
                ).body)
            #expect((list["choices"] as? [[String: Any]])?[0]["text"] as? String == cut.text)
        }
    }

    /// Streamed text equals the whole answer for the same seed, chunk by chunk parsed, the
    /// last chunk with finish_reason and then [DONE]; the prompt and the model's random
    /// byte tokens give multi-byte characters, which no chunk may split.
    @Test(arguments: ["/v1/completions", "/v1/chat/completions"])
    func streamEqualsWhole(path: String) async throws {
        let engine = try fixtureEngine()
        let chat = path.contains("chat")
        @Sendable func body(_ seed: Int, stream: Bool) -> [String: Any] {
            var b: [String: Any] = [
                "max_tokens": 120, "seed": seed, "ignore_eos": true, "stream": stream, "temperature": 1.5, "top_k": 0, "top_p": 1, "min_p": 0,
            ]
            if chat { b["messages"] = [["role": "user", "content": "Grüße, café ☃"]] } else { b["prompt"] = "Grüße, café ☃" }
            return b
        }
        try await makeApplication(engine).test(.router) { client in
            var sawMultiByte = false
            for seed in 1...6 {
                let whole = try json(try await post(client, path, body(seed, stream: false)).body)
                let choice = try #require((whole["choices"] as? [[String: Any]])?.first)
                let wholeText = try #require(chat ? (choice["message"] as? [String: Any])?["content"] as? String : choice["text"] as? String)
                let r = try await post(client, path, body(seed, stream: true))
                #expect(r.status == 200 && r.headers[.contentType] == "text/event-stream")
                let s = try streamedText(r.body)
                #expect(s.done && s.finish == "length" && s.text == wholeText)
                #expect(
                    s.chunks.allSatisfy {
                        $0["seed"] as? Int == seed && $0["object"] as? String == (chat ? "chat.completion.chunk" : "text_completion")
                    })
                // Only the last chunk has a finish_reason.
                #expect(s.chunks.dropLast().allSatisfy { (($0["choices"] as? [[String: Any]])?[0]["finish_reason"]) is NSNull })
                // A split character would show as U+FFFD in a chunk where the whole text has a real character.
                let chunkTexts = s.chunks.compactMap { c -> String? in
                    let ch = (c["choices"] as? [[String: Any]])?[0]
                    return chat ? (ch?["delta"] as? [String: Any])?["content"] as? String : ch?["text"] as? String
                }
                #expect(chunkTexts.joined() == wholeText)
                if wholeText.unicodeScalars.contains(where: { $0.value > 0x7F && $0 != "\u{FFFD}" }) { sawMultiByte = true }
            }
            #expect(sawMultiByte, "no generated text had a multi-byte character: the test did not test splitting")
        }
    }

    @Test func chatUsesThePlainTemplate() async throws {
        let engine = try fixtureEngine()
        let messages = [["role": "system", "content": "Be."], ["role": "user", "content": "Hi"]]
        let template = "system: Be.\nuser: Hi\nassistant:"
        let expected = try referenceText(engine.generator, template, options(seed: 3, maxTokens: 12))
        try await makeApplication(engine).test(.router) { client in
            let o = try json(
                try await post(client, "/v1/chat/completions", ["messages": messages, "max_tokens": 12, "seed": 3, "ignore_eos": true]).body)
            #expect(o["object"] as? String == "chat.completion" && (o["id"] as? String)?.hasPrefix("chatcmpl-") == true)
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            let message = try #require(choice["message"] as? [String: Any])
            #expect(message["role"] as? String == "assistant" && message["content"] as? String == expected.text)
            #expect((o["usage"] as? [String: Int])?["prompt_tokens"] == engine.tokenizer.encode(template).count)
        }
    }

    @Test func logprobsAreTheModelsTopN() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.router) { client in
            // Greedy: each chosen token is the most likely one, and its logprob is the top one's.
            let o = try json(
                try await post(client, "/v1/completions", ["prompt": "The", "max_tokens": 8, "temperature": 0, "logprobs": 3, "ignore_eos": true])
                    .body)
            let lp = try #require((o["choices"] as? [[String: Any]])?[0]["logprobs"] as? [String: Any])
            let tokens = try #require(lp["tokens"] as? [String]), values = try #require(lp["token_logprobs"] as? [Double])
            let tops = try #require(lp["top_logprobs"] as? [[String: Double]])
            #expect(tokens.count == 8 && values.count == 8 && tops.count == 8 && (lp["text_offset"] as? [Int])?.count == 8)
            for (v, top) in zip(values, tops) {
                #expect(v <= 0 && top.count <= 3 && !top.isEmpty)
                #expect(abs(v - top.values.max()!) < 1e-6)
                #expect(top.values.reduce(0) { $0 + exp($1) } <= 1 + 1e-5)
            }
            // Chat: logprobs true + top_logprobs n.
            let c = try json(
                try await post(
                    client, "/v1/chat/completions",
                    [
                        "messages": [["role": "user", "content": "Hi"]], "max_tokens": 5,
                        "logprobs": true, "top_logprobs": 2, "seed": 1, "ignore_eos": true,
                    ]
                ).body)
            let content = try #require(((c["choices"] as? [[String: Any]])?[0]["logprobs"] as? [String: Any])?["content"] as? [[String: Any]])
            #expect(content.count == 5)
            for t in content {
                let top = try #require(t["top_logprobs"] as? [[String: Any]])
                #expect(top.count == 2 && (top[0]["logprob"] as! Double) >= (top[1]["logprob"] as! Double))
                #expect((t["logprob"] as! Double) <= (top[0]["logprob"] as! Double) + 1e-6 && t["bytes"] is [Int])
            }
        }
    }

    @Test func badRequestsGetOpenAIErrors() async throws {
        let engine = try fixtureEngine()
        let baseline = try fixtureEngine(baselineFixture)
        try await makeApplication(engine).test(.router) { client in
            let bad: [(Data, String?)] = [
                (Data("{\"prompt\": \"x\",".utf8), nil),  // malformed JSON
                (Data([0x7B, 0x22, 0x70, 0x72, 0x6F, 0x6D, 0x70, 0x74, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D]), nil),  // invalid UTF-8
                (jsonBody(["prompt": 5]), "prompt"),
                (jsonBody(["prompt": "x", "max_tokens": "ten"]), "max_tokens"),
                (jsonBody(["prompt": "x", "max_tokens": -1]), "max_tokens"),
                (jsonBody(["prompt": "x", "max_tokens": 1e12]), "max_tokens"),
                (jsonBody(["prompt": "x", "temperature": -1]), "temperature"),
                (jsonBody(["prompt": "x", "top_p": 0]), "top_p"),
                (jsonBody(["prompt": "x", "seed": -3]), "seed"),
                (jsonBody(["prompt": "x", "top_k": 1.5]), "top_k"),
                (Data("{\"prompt\": \"x\", \"max_tokens\": 99999999999999999999999}".utf8), "max_tokens"),
                (jsonBody(["prompt": "x", "stop": [1, 2]]), "stop"),
                (jsonBody(["prompt": "x", "stream": "yes"]), "stream"),
                (jsonBody(["prompt": "x", "logprobs": 50]), "logprobs"),
                (jsonBody(["prompt": "x", "n": 2]), "n"),
                (jsonBody(["prompt": ""]), "prompt"),
                (jsonBody(["prompt": "x", "model": "gpt-4"]), "model"),
                (jsonBody(["max_tokens": 3]), "prompt"),
                (Data("[1, 2]".utf8), nil),
            ]
            for (body, param) in bad {
                let r = try await post(client, "/v1/completions", body)
                try expectError(r, 400, param: param)
            }
            try expectError(try await post(client, "/v1/chat/completions", ["messages": []]), 400, param: "messages")
            try expectError(try await post(client, "/v1/chat/completions", ["messages": [["role": "user"]]]), 400)
            try expectError(
                try await client.execute(uri: "/v1/nothing", method: .get) { (Int($0.status.code), Data(buffer: $0.body), $0.headers) }, 404)
            // The server keeps serving.
            #expect(try await post(client, "/v1/completions", ["prompt": "x", "max_tokens": 2]).status == 200)
        }
        try await makeApplication(baseline).test(.router) { client in
            let context = baseline.generator.model.config.context
            let long = String(repeating: "a b ", count: context)
            #expect(baseline.tokenizer.encode(long).count > context)
            let m = try expectError(try await post(client, "/v1/completions", ["prompt": long]), 400, param: "prompt")
            #expect(m.contains("context"))
        }
    }

    @Test func bodiesOverTheLimitGet413() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.router) { client in
            // 100 MB: refused from its Content-Length, without reading it.
            let huge = Data(repeating: 0x20, count: 100 << 20)
            try expectError(try await post(client, "/v1/completions", huge), 413)
            // Without a Content-Length the same limit holds while reading.
            let r = try await client.execute(
                uri: "/v1/completions", method: .post, headers: [.transferEncoding: "chunked"],
                body: ByteBuffer(bytes: Data(repeating: 0x20, count: (1 << 20) + 10))
            ) {
                (Int($0.status.code), Data(buffer: $0.body), $0.headers)
            }
            try expectError(r, 413)
        }
    }

    @Test func apiKeyIsRequiredWhenSet() async throws {
        let engine = try fixtureEngine { $0.apiKey = "sesame" }
        try await makeApplication(engine).test(.router) { client in
            let body = jsonBody(["prompt": "x", "max_tokens": 1])
            try expectError(try await post(client, "/v1/completions", body), 401)
            try expectError(
                try await post(client, "/v1/completions", body, headers: [.contentType: "application/json", .authorization: "Bearer wrong"]), 401)
            #expect(
                try await post(client, "/v1/completions", body, headers: [.contentType: "application/json", .authorization: "Bearer sesame"]).status
                    == 200)
            #expect(try await client.execute(uri: "/v1/models", method: .get) { $0.status } == .unauthorized)
            #expect(try await client.execute(uri: "/health", method: .get) { $0.status } == .ok)
        }
    }
}
