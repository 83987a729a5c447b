import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the msgen binary built beside the tests, as a user would: arguments, stdin, and
/// optionally Ctrl-C or a closed stdout part-way through.
public enum MSGenCLI {
    /// The msgen executable of this build (it sits next to the test bundle).
    public static let binary: String = {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("msgen").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/debug/msgen").path
    }()

    public struct Result {
        public let status: Int32
        public let stdout: Data
        public let stderr: String
    }

    /// Runs msgen; `signalAfter` sends SIGINT once that many stdout bytes have arrived,
    /// `interruptOnceHandled` as soon as msgen has installed its SIGINT handler (no
    /// guessing at a delay). `environment` replaces the environment, `directory` is the
    /// working directory. A run still going after `timeout` seconds is killed (status 9),
    /// so that a test that fails by hanging ends anyway.
    public static func run(
        _ args: [String], stdin: Data = Data(), signalAfter: Int? = nil, closeStdoutAfter: Int? = nil,
        interruptOnceHandled: Bool = false, environment: [String: String]? = nil, directory: String? = nil,
        executable: String? = nil, timeout: Double = 600
    ) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable ?? binary)
        p.arguments = args
        if let environment { p.environment = environment }
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out; p.standardError = err; p.standardInput = inp
        try p.run()
        let pid = p.processIdentifier
        let killer = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        defer { killer.cancel() }
        inp.fileHandleForWriting.write(stdin)
        try inp.fileHandleForWriting.close()
        if interruptOnceHandled {
            while p.isRunning && !catchesSIGINT(pid) { usleep(2000) }
            kill(pid, SIGINT)
        }
        var stdout = Data()
        if signalAfter != nil || closeStdoutAfter != nil {
            while stdout.count < (signalAfter ?? closeStdoutAfter)! {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                stdout += chunk
            }
            if signalAfter != nil { kill(p.processIdentifier, SIGINT) }
            if closeStdoutAfter != nil { try out.fileHandleForReading.close() }
        }
        if closeStdoutAfter == nil { stdout += out.fileHandleForReading.readDataToEndOfFile() }
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: stdout, stderr: String(decoding: e, as: UTF8.self))
    }

    /// Runs a /bin/sh script, with $MSGEN the msgen binary (for redirections such as
    /// `>/dev/full` or `>&-` that a Pipe cannot give).
    public static func shell(_ script: String, stdin: Data = Data(), environment: [String: String] = [:], directory: String? = nil) throws -> Result {
        var env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        env["MSGEN"] = binary
        return try run(["-c", script], stdin: stdin, environment: env, directory: directory, executable: "/bin/sh")
    }

    /// Whether the process has a handler for SIGINT (bit 1 of SigCgt in /proc/PID/status).
    static func catchesSIGINT(_ pid: Int32) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigCgt:") }),
            let mask = UInt64(line.dropFirst("SigCgt:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return false }
        return mask & (1 << (SIGINT - 1)) != 0
    }
}
