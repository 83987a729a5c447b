import Foundation
import MSGen
import MSModels
import MSServeRequests
import MSTokenizer
import Synchronization

/// What a sequence sends to the request that owns it, in order: tokens, then one `end`
/// (or one `failed`).
enum SequenceEvent: Sendable {
    case token(Decoded)
    case end(StopReason, promptTokens: Int, completionTokens: Int)
    /// The server gave up on the sequence (shutting down, or the model failed); text sent
    /// before stays valid.
    case failed(APIError)
}

/// The request's side of a sequence: its events, and a way to cancel it.
struct SequenceHandle: Sendable {
    let events: AsyncStream<SequenceEvent>
    fileprivate let sequence: Sequence
    /// Ends the sequence: the scheduler drops it before its next step. Safe to call at
    /// any time, from anywhere, more than once.
    func cancel() { sequence.cancel() }
}

/// One sequence. Only the scheduler thread touches its decoding state and cache; the
/// request only sets `cancelled`.
private final class Sequence: @unchecked Sendable {
    let prompt: [Int]
    var decoding: Decoding
    var cache: DecoderCache?
    /// Prompt tokens already run into the cache: a long prompt goes in over several
    /// rounds, a chunk per round, so that it never stalls the running streams for long.
    var prefilled = 0
    /// The logits the next token is sampled from (set by prefill, then by each step: its
    /// row of the step's logits, shared with the other rows, not copied).
    var logits: ArraySlice<Float> = []
    /// The token sampled last, fed to the next step.
    var lastToken = -1
    let output: AsyncStream<SequenceEvent>.Continuation
    let cancelled = Atomic<Bool>(false)

    init(prompt: [Int], decoding: Decoding, output: AsyncStream<SequenceEvent>.Continuation) {
        self.prompt = prompt; self.decoding = decoding; self.output = output
    }

    func cancel() { cancelled.store(true, ordering: .relaxed) }
    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Sends an event; false when the request is gone or too slow to keep up (its buffer
    /// is full), which ends the sequence: a slow client cannot hold the scheduler.
    func send(_ event: SequenceEvent) -> Bool {
        if case .enqueued = output.yield(event) { return true }
        return false
    }
}

/// Continuous batching: one thread advances every running sequence by one token per step;
/// new sequences are prefilled and join between steps, finished or cancelled ones leave at
/// once. At most `maxSequences` run and `queue` more wait; past that `submit` refuses.
final class Scheduler: @unchecked Sendable {
    struct Limits: Sendable {
        var maxSequences = 16
        var queue = 64
        /// Events a request may leave unread before its sequence is cancelled.
        var outputBuffer = 1024
        /// Prompt tokens prefilled between two steps, shared by the prompts still going in
        /// (in order of arrival): a burst of long prompts delays each step by at most
        /// this much prefill, however long the prompts are.
        var prefillBudget = 512
    }

    let model: LanguageModel
    let tokenizer: BPETokenizer
    let eos: Int?
    let limits: Limits
    let metrics: ServeMetrics

    // Guarded by `condition`.
    private let condition = NSCondition()
    private var waiting: [Sequence] = []
    private var runningCount = 0
    private var draining = false
    private var drainDeadline: Date?
    private var stopped = false
    private var exited: [CheckedContinuation<Void, Never>] = []
    private var hasExited = false

    // The scheduler thread's own (read under `condition` by `nextRound`).
    private var running: [Sequence] = []
    /// Admitted sequences whose prompts are still going in, oldest first.
    private var prefilling: [Sequence] = []

    init(model: LanguageModel, tokenizer: BPETokenizer, eos: Int?, limits: Limits, metrics: ServeMetrics) {
        self.model = model; self.tokenizer = tokenizer; self.eos = eos; self.limits = limits; self.metrics = metrics
    }

    /// Starts the scheduler thread (its own thread, so that model work never blocks the
    /// server's event loops or Swift's cooperative pool).
    func start() {
        let thread = Thread { [self] in loop() }
        thread.name = "msgen-scheduler"
        thread.stackSize = 1 << 22
        thread.start()
    }

    /// Checks a prompt and queues its sequence. Throws a 400 for a prompt the model cannot
    /// take and a 503 when the server is full or shutting down.
    func submit(prompt: [Int], options: GenerationOptions) throws -> SequenceHandle {
        do {
            try Decoding.checkPrompt(count: prompt.count, context: model.config.context, canDecodePastContext: model.canDecodePastContext)
        } catch {
            throw APIError.badRequest("\(error)", param: "prompt", code: "context_length_exceeded")
        }
        let decoding = Decoding(
            prompt: prompt, options: options, tokenizer: tokenizer, eos: eos,
            context: model.config.context, canDecodePastContext: model.canDecodePastContext)
        let (events, output) = AsyncStream<SequenceEvent>.makeStream(bufferingPolicy: .bufferingOldest(limits.outputBuffer))
        let sequence = Sequence(prompt: prompt, decoding: decoding, output: output)
        // A request whose consumer stops listening (its task ends) cancels too.
        output.onTermination = { [weak sequence] _ in sequence?.cancel() }
        condition.lock()
        defer { condition.unlock() }
        if draining || stopped { throw APIError.shuttingDown }
        guard runningCount + waiting.count < limits.maxSequences + limits.queue else { throw APIError.overloaded }
        waiting.append(sequence)
        metrics.queuedSequences.set(Double(waiting.count))
        condition.signal()
        return SequenceHandle(events: events, sequence: sequence)
    }

    /// Graceful stop, first half: refuse new sequences; the running and queued ones go on
    /// for up to `seconds`, then are cancelled (their requests get a 503 / an error event).
    func beginDrain(seconds: Double) {
        condition.lock()
        draining = true
        drainDeadline = Date(timeIntervalSinceNow: seconds)
        condition.signal()
        condition.unlock()
    }

    /// True while the server still takes new sequences (what /health reports).
    var isAccepting: Bool {
        condition.lock(); defer { condition.unlock() }
        return !draining && !stopped
    }

    /// Stops the thread, failing whatever still runs, and returns once it has exited.
    func stop() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            condition.lock()
            stopped = true
            if hasExited { c.resume() } else { exited.append(c) }
            condition.signal()
            condition.unlock()
        }
    }

    // MARK: The loop (scheduler thread)

    private func loop() {
        while true {
            // A cancelled sequence leaves before anything else happens: before the next step.
            running.removeAll { leaveIfCancelled($0) }
            prefilling.removeAll { leaveIfCancelled($0) }
            publishCounts()
            guard let newcomers = nextRound() else { break }
            prefilling += newcomers.filter(admit)
            running += prefillChunks()
            // Sample every sequence's next token; the ones that go on feed it back.
            var goingOn: [Sequence] = []
            for s in running where advance(s) { goingOn.append(s) }
            running = goingOn
            publishCounts()
            guard !running.isEmpty else { continue }
            let V = model.config.vocabSize
            // Every active sequence's next token in one batched pass (the projections and the MLP
            // as matrix–matrix products over the batch): row i is sequence i's logits.
            let logits = model.step(running.map(\.lastToken), caches: running.map { $0.cache! })
            for (i, s) in running.enumerated() { s.logits = logits[(i * V)..<((i + 1) * V)] }
            metrics.stepBatchSize.record(Double(running.count))
        }
        fail(running + prefilling, .shuttingDown)
        running = []; prefilling = []
        condition.lock()
        let toFail = waiting
        waiting = []
        hasExited = true
        let continuations = exited
        exited = []
        condition.unlock()
        fail(toFail, .shuttingDown)
        publishCounts()
        for c in continuations { c.resume() }
    }

    /// Waits until there is work, then takes the queued sequences that fit (free slots,
    /// prefill budget). Nil once stopped. Past the drain deadline, fails everything.
    private func nextRound() -> [Sequence]? {
        condition.lock()
        defer { condition.unlock() }
        while !stopped && running.isEmpty && prefilling.isEmpty && waiting.isEmpty {
            if let drainDeadline { _ = condition.wait(until: drainDeadline) } else { condition.wait() }
            if let drainDeadline, Date() >= drainDeadline { break }
        }
        if stopped { return nil }
        if let drainDeadline, Date() >= drainDeadline {
            fail(waiting + running + prefilling, .shuttingDown)
            waiting = []; running = []; prefilling = []
            runningCount = 0
            self.drainDeadline = nil  // done: wait for stop() now
            metrics.queuedSequences.set(0.0)
            return []
        }
        waiting.removeAll { $0.isCancelled && finishCancelled($0) }
        let free = max(0, limits.maxSequences - running.count - prefilling.count)
        let taken = Array(waiting.prefix(free))
        waiting.removeFirst(taken.count)
        runningCount = running.count + prefilling.count + taken.count
        metrics.queuedSequences.set(Double(waiting.count))
        return taken
    }

    /// Gives a newcomer its cache; false if it left instead (cancelled, or nothing to
    /// generate).
    private func admit(_ s: Sequence) -> Bool {
        if leaveIfCancelled(s) { return false }
        if let reason = s.decoding.finished {  // max_tokens 0
            _ = s.send(.end(reason, promptTokens: s.prompt.count, completionTokens: 0))
            s.output.finish()
            return false
        }
        s.cache = model.makeCache()
        return true
    }

    /// Runs up to `prefillBudget` prompt tokens into the caches of the sequences still
    /// prefilling, oldest first, and returns the ones whose prompts are now complete
    /// (their `logits` are the last prompt token's). A sequence the model fails on leaves.
    private func prefillChunks() -> [Sequence] {
        var budget = limits.prefillBudget, complete: [Sequence] = []
        while budget > 0, let s = prefilling.first {
            let end = min(s.prompt.count, s.prefilled + budget)
            let last = end == s.prompt.count
            do {
                let rows = try model.prefill(
                    Array(s.prompt[s.prefilled..<end]), cache: s.cache!, logitsFor: last ? (end - s.prefilled - 1)..<(end - s.prefilled) : 0..<0)
                if last { s.logits = rows[...] }
            } catch {
                prefilling.removeFirst()
                fail([s], .internalError("prefill failed: \(error)"))
                continue
            }
            metrics.promptTokens.increment(by: Int64(end - s.prefilled))
            budget -= end - s.prefilled
            s.prefilled = end
            guard last else { break }
            complete.append(prefilling.removeFirst())
        }
        return complete
    }

    /// Samples one token and sends it; false once the sequence has ended.
    private func advance(_ s: Sequence) -> Bool {
        let d = s.logits.withUnsafeBufferPointer { s.decoding.next($0) }
        s.lastToken = d.id
        metrics.completionTokens.increment()
        guard s.send(.token(d)) else {
            s.output.finish()
            return false
        }
        guard let reason = d.stop else { return true }
        _ = s.send(.end(reason, promptTokens: s.prompt.count, completionTokens: s.decoding.generated))
        s.output.finish()
        return false
    }

    /// Drops a cancelled sequence (its request is gone: nothing to send). True if it left.
    private func leaveIfCancelled(_ s: Sequence) -> Bool {
        guard s.isCancelled else { return false }
        return finishCancelled(s)
    }

    private func finishCancelled(_ s: Sequence) -> Bool {
        _ = s.decoding.cancel()
        s.output.finish()
        return true
    }

    private func fail(_ sequences: [Sequence], _ error: APIError) {
        for s in sequences {
            _ = s.send(.failed(error))
            s.output.finish()
        }
    }

    private func publishCounts() {
        condition.lock()
        runningCount = running.count + prefilling.count
        condition.unlock()
        metrics.activeSequences.set(Double(running.count + prefilling.count))
        let bytes = { (all: [Sequence]) in all.reduce(0) { $0 + ($1.cache?.byteCount ?? 0) } }
        metrics.cacheBytes.set(Double(bytes(running) + bytes(prefilling)))
    }
}
