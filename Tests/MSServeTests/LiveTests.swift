import Foundation
import Hummingbird
import HummingbirdTesting
import MSGen
import Testing

@testable import MSServe

/// Tests over a real listening socket: many clients at once, and clients that misbehave.
/// No wall-clock assertions: waits are for a state, bounded only so that a bug fails
/// instead of hanging.
struct LiveTests {
    /// Polls /metrics until `metric(name)` satisfies `ok` (bounded at ~20 s).
    func waitForMetric(port: Int, _ name: String, _ ok: (Double) -> Bool) throws -> Double? {
        var last: Double?
        for _ in 0..<400 {
            let m = String(decoding: try RawHTTP.fetch(port: port, "GET", "/metrics").body, as: UTF8.self)
            last = metric(m, name)
            if let last, ok(last) { return last }
            usleep(50_000)
        }
        return last
    }

    func streamBody(seed: Int, maxTokens: Int) -> Data {
        jsonBody(["prompt": "And God said", "max_tokens": maxTokens, "seed": seed, "ignore_eos": true, "stream": true])
    }

    /// CST, and the baseline (whose streams also end at its context).
    @Test(arguments: RouteTests.fixtures)
    func concurrentStreamsEachGiveTheirTextAlone(fixture: String) async throws {
        let engine = try fixtureEngine(fixture) {
            $0.maxSequences = 32; $0.queue = 0
        }
        let alone = try (0..<32).map { try referenceText(engine.generator, "And God said", options(seed: UInt64(1000 + $0), maxTokens: 40)).text }
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            let streams = try await blocking {
                try onThreads(32) { i in
                    let c = try RawHTTP(port: port)
                    c.request("POST", "/v1/completions", body: streamBody(seed: 1000 + i, maxTokens: 40))
                    let r = try c.response()
                    return (r.status, try streamedText(r.body).text, try streamedText(r.body).done)
                }
            }
            for i in 0..<32 {
                #expect(streams[i].0 == 200 && streams[i].2, "stream \(i)")
                #expect(streams[i].1 == alone[i], "stream \(i)")
            }
            // Steps advanced more than one sequence at once: the largest step's bucket.
            let m = String(decoding: try await blocking { try RawHTTP.fetch(port: port, "GET", "/metrics").body }, as: UTF8.self)
            let steps = metric(m, "msgen_step_batch_size_count") ?? 0, single = metric(m, "msgen_step_batch_size_bucket{le=\"1.0\"}") ?? 0
            #expect(steps > single, "every step ran one sequence: \(m)")
        }
    }

    /// Prompts longer than the prefill chunk go in over several steps while other streams
    /// decode; each still gives exactly its text alone.
    @Test(arguments: RouteTests.fixtures)
    func longPromptsGoInChunkByChunkAndGiveTheirTextAlone(fixture: String) async throws {
        let engine = try fixtureEngine(fixture) {
            $0.maxSequences = 8; $0.queue = 0; $0.prefillChunk = 3
        }
        let text = engine.tokenizer.encode("In the beginning God created the heaven and the earth. And the earth was without form.")
        let prompts = (0..<8).map { String(decoding: engine.tokenizer.decode(Array(text.prefix(1 + 2 * $0))), as: UTF8.self) }
        #expect(engine.tokenizer.encode(prompts[7]).count > 3 * 4, "the longest prompt takes several chunks")
        let alone = try (0..<8).map { try referenceText(engine.generator, prompts[$0], options(seed: UInt64(7 + $0), maxTokens: 10)).text }
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            let streams = try await blocking {
                try onThreads(8) { i in
                    let c = try RawHTTP(port: port)
                    let body = jsonBody(["prompt": prompts[i], "max_tokens": 10, "seed": 7 + i, "ignore_eos": true, "stream": true])
                    c.request("POST", "/v1/completions", body: body)
                    let r = try c.response()
                    return (r.status, try streamedText(r.body).text)
                }
            }
            for i in 0..<8 { #expect(streams[i].0 == 200 && streams[i].1 == alone[i], "stream \(i)") }
        }
    }

    @Test func aDisconnectedStreamLeavesAtOnce() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                let c = try RawHTTP(port: port)
                c.request("POST", "/v1/completions", body: streamBody(seed: 5, maxTokens: 1_000_000))
                // Read until a few chunks have arrived, then hang up.
                c.read { String(decoding: $0, as: UTF8.self).components(separatedBy: "data: ").count > 3 }
                #expect(try waitForMetric(port: port, "msgen_active_sequences") { $0 == 1 } == 1)
                c.hangUp()
                #expect(try waitForMetric(port: port, "msgen_active_sequences") { $0 == 0 } == 0)
                // Generation stopped: the token count no longer moves.
                let m1 = metric(
                    String(decoding: try RawHTTP.fetch(port: port, "GET", "/metrics").body, as: UTF8.self), "msgen_completion_tokens_total")
                usleep(200_000)
                let m2 = metric(
                    String(decoding: try RawHTTP.fetch(port: port, "GET", "/metrics").body, as: UTF8.self), "msgen_completion_tokens_total")
                #expect(m1 != nil && m1 == m2 && m1! < 1_000_000)
            }
        }
    }

    @Test func aClientThatHangsUpOnAWholeAnswerCancelsIt() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                let c = try RawHTTP(port: port)
                c.request("POST", "/v1/completions", body: jsonBody(["prompt": "x", "max_tokens": 1_000_000, "ignore_eos": true]))
                #expect(try waitForMetric(port: port, "msgen_active_sequences") { $0 == 1 } == 1)
                c.hangUp()
                #expect(try waitForMetric(port: port, "msgen_active_sequences") { $0 == 0 } == 0)
            }
        }
    }

    /// The graceful stop's drain: new requests get 503 and /health says so; a stream still
    /// running at the deadline ends with an error event.
    @Test func drainingRefusesNewWorkThenCancelsWhatRuns() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                let c = try RawHTTP(port: port)
                c.request("POST", "/v1/completions", body: streamBody(seed: 3, maxTokens: 1_000_000))
                c.read { $0.count > 300 }
                engine.scheduler.beginDrain(seconds: 0.5)
                #expect(try RawHTTP.fetch(port: port, "GET", "/health").status == 503)
                let refused = try RawHTTP.fetch(port: port, "POST", "/v1/completions", body: jsonBody(["prompt": "x", "max_tokens": 2]))
                #expect(refused.status == 503)
                #expect(((try json(refused.body))["error"] as? [String: Any])?["code"] as? String == "shutting_down")
                // The rest of the stream (raw, still chunked): an error event, no [DONE], then the close.
                let rest = String(decoding: c.read(), as: UTF8.self)
                #expect(c.closedByPeer && rest.contains("data: {\"error\"") && rest.contains("shutting_down") && !rest.contains("[DONE]"))
            }
        }
    }

    @Test func aStalledRequestIsClosed() async throws {
        let engine = try fixtureEngine { $0.idleSeconds = 1 }
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                // Half a body, then silence (the connection stays open from the client's side).
                let c = try RawHTTP(port: port)
                c.request("POST", "/v1/completions", body: Data("{\"prompt\":".utf8), contentLength: 100)
                c.read()
                #expect(c.closedByPeer, "the server did not close a stalled request")
            }
        }
    }

    @Test func aClientThatStopsReadingIsCancelled() async throws {
        let engine = try fixtureEngine { $0.outputBuffer = 8 }
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                // A tiny receive window and no reads: the server's writes stall, its buffer fills.
                let c = try RawHTTP(port: port, receiveBuffer: 2048)
                c.request("POST", "/v1/completions", body: streamBody(seed: 9, maxTokens: 1_000_000))
                #expect(try waitForMetric(port: port, "msgen_completion_tokens_total") { $0 > 0 } ?? 0 > 0)
                #expect(try waitForMetric(port: port, "msgen_active_sequences") { $0 == 0 } == 0)
                // Others are still served.
                let r = try RawHTTP.fetch(port: port, "POST", "/v1/completions", body: jsonBody(["prompt": "x", "max_tokens": 3]))
                #expect(r.status == 200)
                withExtendedLifetime(c) {}
            }
        }
    }

    @Test func overloadGives503WithRetryAfter() async throws {
        let engine = try fixtureEngine {
            $0.maxSequences = 1; $0.queue = 1
        }
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                let running = try RawHTTP(port: port), queued = try RawHTTP(port: port)
                running.request("POST", "/v1/completions", body: streamBody(seed: 1, maxTokens: 1_000_000))
                running.read { $0.count > 200 }
                queued.request("POST", "/v1/completions", body: streamBody(seed: 2, maxTokens: 5))
                #expect(try waitForMetric(port: port, "msgen_queued_sequences") { $0 == 1 } == 1)
                let r = try RawHTTP.fetch(port: port, "POST", "/v1/completions", body: jsonBody(["prompt": "x", "max_tokens": 3]))
                #expect(r.status == 503 && r.headers.lowercased().contains("retry-after: 1"))
                #expect(((try json(r.body))["error"] as? [String: Any])?["code"] as? String == "overloaded")
                // Once the running one leaves, the queued one runs to its end.
                running.hangUp()
                let q = try queued.response()
                let s = try streamedText(q.body)
                #expect(q.status == 200 && s.done && s.finish == "length")
            }
        }
    }

    @Test func brokenRequestsDoNotStopTheServer() async throws {
        let engine = try fixtureEngine()
        try await makeApplication(engine).test(.live) { client in
            let port = try #require(client.port)
            try await blocking {
                // A body that ends before its Content-Length: the client gives up and closes.
                let early = try RawHTTP(port: port)
                early.request("POST", "/v1/completions", body: Data("{\"prompt\": \"In the".utf8), contentLength: 1000)
                shutdown(early.fd, Int32(SHUT_WR))
                _ = early.read()
                early.hangUp()
                // Invalid UTF-8 and a 100 MB body over a real socket.
                let invalid = try RawHTTP.fetch(
                    port: port, "POST", "/v1/completions", body: Data([0x7B, 0x22, 0x70, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D]))
                #expect(invalid.status == 400)
                let huge = try RawHTTP(port: port)
                huge.request("POST", "/v1/completions", body: Data(), contentLength: 100 << 20)
                huge.send(Data(repeating: 0x20, count: 1 << 20))
                #expect(try huge.response().status == 413)
                // Still serving.
                let ok = try RawHTTP.fetch(port: port, "POST", "/v1/completions", body: jsonBody(["prompt": "x", "max_tokens": 3]))
                #expect(ok.status == 200)
                #expect(try RawHTTP.fetch(port: port, "GET", "/health").status == 200)
            }
        }
    }
}
