import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Standard output, flushed as it goes. A reader that goes away (`| head`, EPIPE) ends
/// the program quietly with status 0; any other failed write (a full disk, /dev/full, a
/// closed stdout) is one line on stderr and status 1, so that no output is lost silently.
enum Output {
    /// Call first in every command that prints (before opening any file: with stdout
    /// closed, the next file opened would otherwise become descriptor 1).
    static func setUp() {
        signal(SIGPIPE, SIG_IGN)
        if fcntl(1, F_GETFD) == -1 { fail(errno) }
    }

    static func write(_ s: String) {
        guard !s.isEmpty else { return }
        var bytes = Array(s.utf8)
        let n = fwrite(&bytes, 1, bytes.count, stdout)
        if n < bytes.count || fflush(stdout) != 0 { fail(errno) }
    }

    /// Ends the program for a failed write to stdout.
    static func fail(_ code: Int32) -> Never {
        if code == EPIPE { exit(0) }
        Terminal.note("cannot write to standard output: \(String(cString: strerror(code)))")
        exit(1)
    }
}

/// Set by Ctrl-C: the work stops at its next check (a token, a window, a measurement)
/// and the program exits with 130.
enum Interrupt {
    nonisolated(unsafe) static var requested = false

    /// Call once the inputs are read (until then Ctrl-C simply ends the program).
    static func install() {
        signal(SIGINT, { _ in Interrupt.requested = true })
        // A parent may hand down a mask that blocks SIGINT (a process spawned from a
        // Dispatch worker thread does): Ctrl-C must reach the handler all the same.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
