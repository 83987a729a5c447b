import Foundation
import MSServeRequests
import Testing

/// ServeRequests on bodies alone (no router): what the handlers and the fuzz target `http`
/// both call.
struct RequestTests {
    let limits = RequestLimits(modelName: "m", maxTokensLimit: 100, vocabSize: 10)

    func refusal(_ f: () throws -> Void) -> APIError? {
        do { try f(); return nil } catch let e as APIError { return e } catch { return nil }
    }

    @Test func aChatBodyBecomesThePlainTemplateAndItsOptions() throws {
        let body =
            #"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}], "max_tokens": 7, "stop": "x", "top_logprobs": 2, "logprobs": true, "seed": 5}"#
        let g = try ServeRequests.chat(Data(body.utf8), limits: limits)
        #expect(g.prompt == "system: be brief\nuser: hi\nassistant:")
        #expect(g.options.maxTokens == 7 && g.options.stop == ["x"] && g.options.logprobs == 2 && g.options.sampler.seed == 5)
        #expect(g.chat && g.wantsLogprobs && !g.stream)
    }

    @Test func eachRouteRefusesWithA400NamingTheField() {
        let cases: [(() throws -> Void, String?)] = [
            ({ _ = try ServeRequests.completion(Data(#"{"prompt": "x", "max_tokens": 101}"#.utf8), limits: limits) }, "max_tokens"),
            ({ _ = try ServeRequests.completion(Data(#"{"prompt": "x", "top_k": 1.5}"#.utf8), limits: limits) }, "top_k"),
            ({ _ = try ServeRequests.completion(Data(#"{"prompt": "x", "model": "other"}"#.utf8), limits: limits) }, "model"),
            ({ _ = try ServeRequests.chat(Data(#"{"messages": [{"role": 1}]}"#.utf8), limits: limits) }, "messages"),
            ({ _ = try ServeRequests.tokenize(Data(#"{"content": 3}"#.utf8)) }, "content"),
            ({ _ = try ServeRequests.detokenize(Data(#"{"tokens": [9, 10]}"#.utf8), limits: limits) }, "tokens"),
            ({ _ = try ServeRequests.tokenize(Data([0xFF])) }, nil),
        ]
        for (f, param) in cases {
            let e = refusal(f)
            #expect(e?.status == 400 && e?.param == param, "\(String(describing: e))")
        }
    }
}
