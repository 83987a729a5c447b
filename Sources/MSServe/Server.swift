import Foundation
import Hummingbird
import Logging
import MSGen
import MSModels
import MSServeRequests
import MSTokenizer
import ServiceLifecycle

/// What `msgen serve` is started with (DESIGN §9's options, and a few limits the tests set).
public struct ServeOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Sequences decoded at once, and sequences that may wait for a slot.
    public var maxSequences = 16
    public var queue = 64
    /// Prompt tokens prefilled between two decode steps (a longer prompt takes several).
    public var prefillChunk = 512
    /// When set, every /v1 and token route needs `Authorization: Bearer KEY`.
    public var apiKey: String?
    /// Larger request bodies get 413.
    public var maxBodyBytes = 1 << 20
    /// Events a request may leave unread before its sequence is cancelled (a slow client).
    public var outputBuffer = 1024
    /// On SIGTERM, how long running streams may go on before they are cancelled.
    public var drainSeconds = 20.0
    /// Seconds a connection may stay silent while its request is read, or idle between requests.
    public var idleSeconds = 30
    /// The largest max_tokens a request may ask for.
    public var maxTokensLimit = 1 << 20
    public init() {}
}

/// The model being served and everything the handlers share.
final class Engine: Sendable {
    let generator: Generator
    let modelName: String
    let options: ServeOptions
    let scheduler: Scheduler
    let metrics: ServeMetrics
    let created = Int(Date().timeIntervalSince1970)

    init(generator: Generator, modelName: String, options: ServeOptions) {
        self.generator = generator
        self.modelName = modelName
        self.options = options
        metrics = ServeMetrics()
        let limits = Scheduler.Limits(
            maxSequences: options.maxSequences, queue: options.queue, outputBuffer: options.outputBuffer, prefillBudget: options.prefillChunk)
        scheduler = Scheduler(model: generator.model, tokenizer: generator.tokenizer, eos: generator.eos, limits: limits, metrics: metrics)
    }

    var tokenizer: BPETokenizer { generator.tokenizer }
}

/// The scheduler thread as a service of the application: started before the server
/// listens, stopped after it has closed.
struct SchedulerService: Service {
    let scheduler: Scheduler
    func run() async throws {
        scheduler.start()
        // Runs until the server has shut down (the service group stops this last).
        try? await gracefulShutdown()
        await scheduler.stop()
    }
}

/// Every route of DESIGN §9, in one place.
func buildRouter(_ engine: Engine) -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: ErrorMiddleware(metrics: engine.metrics))
    router.add(middleware: APIKeyMiddleware(key: engine.options.apiKey))
    let h = Handlers(engine: engine)
    router.post("/v1/completions") { try await h.completions($0, context: $1) }
    router.post("/v1/chat/completions") { try await h.chat($0, context: $1) }
    router.get("/v1/models") { try await h.models($0, context: $1) }
    router.get("/v1/models/{id}") { try await h.model($0, context: $1) }
    router.get("/health") { try await h.health($0, context: $1) }
    router.get("/metrics") { try await h.metrics($0, context: $1) }
    router.post("/tokenize") { try await h.tokenize($0, context: $1) }
    router.post("/detokenize") { try await h.detokenize($0, context: $1) }
    return router
}

/// The application: router, scheduler, listening address. `onListening` gets the bound
/// port (useful with port 0).
func makeApplication(_ engine: Engine, logger: Logger? = nil, onListening: @escaping @Sendable (Int) -> Void = { _ in })
    -> some ApplicationProtocol
{
    var log = logger ?? Logger(label: "msgen-serve") { StreamLogHandler.standardError(label: $0) }
    if logger == nil { log.logLevel = .warning }
    return Application(
        router: buildRouter(engine),
        // A connection that sends nothing for this long while its request is read (a
        // half-open or stalled client), or sits idle between requests, is closed. A
        // response being written is never cut by it.
        server: .http1(configuration: .init(idleTimeout: .seconds(Int64(engine.options.idleSeconds)))),
        configuration: .init(address: .hostname(engine.options.host, port: engine.options.port), serverName: "msgen"),
        services: [SchedulerService(scheduler: engine.scheduler)],
        onServerRunning: { channel in onListening(channel.localAddress?.port ?? engine.options.port) },
        logger: log
    )
}

/// Serves `generator` until SIGTERM or SIGINT: then stops accepting connections, lets the
/// running streams finish (cancelling those still running after `drainSeconds`) and
/// returns.
public func serve(
    _ generator: Generator, modelName: String, options: ServeOptions,
    onListening: @escaping @Sendable (Int) -> Void = { _ in }
) async throws {
    let engine = Engine(generator: generator, modelName: modelName, options: options)
    let app = makeApplication(engine, onListening: onListening)
    let service = DrainingService(app: app, scheduler: engine.scheduler, drainSeconds: options.drainSeconds)
    var logger = Logger(label: "msgen-serve") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .warning
    let group = ServiceGroup(configuration: .init(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

/// Runs the application, and tells the scheduler to drain as soon as the graceful stop
/// begins (the application's own group stops the scheduler only after the server has
/// closed, which would wait for every stream however long).
struct DrainingService<App: ApplicationProtocol>: Service {
    let app: App
    let scheduler: Scheduler
    let drainSeconds: Double
    func run() async throws {
        try await withGracefulShutdownHandler {
            try await app.run()
        } onGracefulShutdown: {
            scheduler.beginDrain(seconds: drainSeconds)
        }
    }
}

// MARK: Middleware

/// Turns every error into OpenAI's error object (404s from the router included) and
/// counts answers by status.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServeMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            response = Self.response(for: Self.apiError(error, path: request.uri.path))
        }
        metrics.request(status: response.status.code)
        return response
    }

    static func apiError(_ error: Error, path: String) -> APIError {
        switch error {
        case let e as APIError: return e
        case let e as HTTPError where e.status == .notFound: return .notFound(path)
        case let e as HTTPError where e.status == .contentTooLarge: return .tooLarge(limit: nil)
        case let e as HTTPError:
            return APIError(status: e.status.code, message: e.body ?? e.status.reasonPhrase, type: "invalid_request_error")
        default: return .internalError("\(error)")
        }
    }

    static func response(for e: APIError) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if e.status == 503 { headers[.retryAfter] = "1" }
        let data = (try? Wire.encoder().encode(e.body)) ?? Data()
        return Response(status: .init(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// With --api-key, the model routes need `Authorization: Bearer KEY`; /health and
/// /metrics stay open for load balancers and scrapers.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let key, !["/health", "/metrics"].contains(request.uri.path) else { return try await next(request, context) }
        guard request.headers[.authorization] == "Bearer \(key)" else { throw APIError.unauthorized }
        return try await next(request, context)
    }
}
