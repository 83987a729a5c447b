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

    /// Runs msgen; `signalAfter` sends SIGINT once that many stdout bytes have arrived. A
    /// run still going after `timeout` seconds is killed (status 9), so that a test that
    /// fails by hanging ends anyway.
    public static func run(_ args: [String], stdin: Data = Data(), signalAfter: Int? = nil, closeStdoutAfter: Int? = nil,
                           timeout: Double = 600) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out; p.standardError = err; p.standardInput = inp
        try p.run()
        let pid = p.processIdentifier
        let killer = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        defer { killer.cancel() }
        inp.fileHandleForWriting.write(stdin)
        try inp.fileHandleForWriting.close()
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
}
