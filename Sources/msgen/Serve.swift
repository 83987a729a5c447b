import ArgumentParser
import Foundation
import MSFormat
import MSServe

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible HTTP API.",
        discussion: """
            Routes: POST /v1/completions, POST /v1/chat/completions (plain or stream: true), \
            GET /v1/models, /health, /metrics, POST /tokenize, /detokenize. Many requests are \
            decoded at once, one token each per step. SIGTERM or Ctrl-C stops accepting \
            connections, lets running streams finish (for up to 20 s) and exits 0.
            """
    )

    @OptionGroup var common: ModelOptions

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port, printed on stderr).")
    var port = 8080

    @Option(name: .customLong("max-sequences"), help: "Sequences decoded at once.")
    var maxSequences = 16

    @Option(help: "Requests that may wait for a free sequence; past that the answer is 503.")
    var queue = 64

    @Option(
        name: .customLong("prefill-chunk"),
        help:
            "Prompt tokens run between two decode steps; a longer prompt goes in over several steps, so it never stalls the running streams for long."
    )
    var prefillChunk = 512

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' (default: $MSGEN_API_KEY; none: open).")
    var apiKey: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw MSGenError("--port must be in 0…65535") }
        guard maxSequences >= 1 else { throw MSGenError("--max-sequences must be ≥ 1") }
        guard queue >= 0 else { throw MSGenError("--queue must be ≥ 0") }
        guard prefillChunk >= 1 else { throw MSGenError("--prefill-chunk must be ≥ 1") }
    }

    func run() async throws {
        common.applyThreads()
        let path = try common.path()
        let generator = try openGenerator(path)
        var options = ServeOptions()
        options.host = host
        options.port = port
        options.maxSequences = maxSequences
        options.queue = queue
        options.prefillChunk = prefillChunk
        options.apiKey = apiKey ?? ProcessInfo.processInfo.environment["MSGEN_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        let name = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        let host = self.host
        try await serve(generator, modelName: name, options: options) { port in
            fputs("msgen serve: \(name) on http://\(host):\(port)\n", stderr)
        }
    }
}
