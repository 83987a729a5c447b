#if canImport(Glibc)
import Glibc
#endif

/// Standard output, flushed as it goes. A reader that goes away (`| head`) ends the
/// program quietly: SIGPIPE is ignored and the failed write exits with status 0.
enum Output {
    static func setUp() {
        signal(SIGPIPE, SIG_IGN)
        signal(SIGINT, { _ in Interrupt.requested = true })
        // A parent may hand down a mask that blocks SIGINT (a process spawned from a
        // Dispatch worker thread does): Ctrl-C must reach the handler all the same.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    static func write(_ s: String) {
        guard !s.isEmpty else { return }
        var bytes = Array(s.utf8)
        let n = fwrite(&bytes, 1, bytes.count, stdout)
        if n < bytes.count || fflush(stdout) != 0 { exit(0) }
    }
}

/// Set by Ctrl-C; generation stops after the current token and exits with 130.
enum Interrupt {
    nonisolated(unsafe) static var requested = false
}
