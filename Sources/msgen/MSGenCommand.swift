import ArgumentParser
import Foundation
import MSFormat

@main
struct MSGenCommand: AsyncParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "msgen",
        abstract: "Run multi-scale transformer language models (CST, MS-Trans) on the CPU.",
        discussion: "With no subcommand, msgen generates: `msgen \"In the beginning\"`.",
        version: version,
        subcommands: [Generate.self, Tokenize.self, PerplexityCommand.self, BenchCommand.self, Convert.self, Inspect.self, Classify.self, Serve.self],
        defaultSubcommand: Generate.self
    )

    /// Like ArgumentParser's own main, except that a failure is one line on stderr
    /// (usage errors point to --help instead of printing the whole usage).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var async = command as? AsyncParsableCommand { try await async.run() } else { try command.run() }
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help, --version
            var line = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            if error is MSGenError == false && !(error is ExitCode) && !line.isEmpty && fullMessage(for: error).contains("Usage:") {
                line += " (see 'msgen --help')"
            }
            if !line.isEmpty { fputs(line + "\n", stderr) }
            Foundation.exit(code.rawValue)
        }
    }
}
