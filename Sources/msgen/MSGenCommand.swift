import ArgumentParser
import Foundation
import MSFormat

@main
struct MSGenCommand: AsyncParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "msgen",
        abstract: "Run multi-scale transformer language models (CST, MS-Trans) on the CPU.",
        discussion: """
            With no subcommand, msgen generates: `msgen "In the beginning"`. A first word that \
            looks like a mistyped subcommand is refused; `msgen -- WORDS` always generates.
            """,
        version: version,
        subcommands: [
            Generate.self, Tokenize.self, PerplexityCommand.self, BenchCommand.self, Convert.self, Inspect.self, Classify.self, Serve.self,
        ],
        defaultSubcommand: Generate.self
    )

    /// Like ArgumentParser's own main, except that a failure is one line on stderr
    /// (usage errors point to the subcommand's --help instead of printing the whole usage).
    static func main() async {
        var args = Array(CommandLine.arguments.dropFirst())
        if args.first == "--" {
            args = ["generate"] + args  // `msgen -- perplexty` is a prompt, whatever it looks like
        } else if let first = args.first, let guess = misspelledSubcommand(first) {
            fputs("'\(first)' is not a subcommand; did you mean \(guess)? (for a prompt: msgen -- \(first) …)\n", stderr)
            Foundation.exit(2)
        }
        do {
            var command = try parseAsRoot(args)
            if var async = command as? AsyncParsableCommand { try await async.run() } else { try command.run() }
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)  // the command has said what there was to say (Ctrl-C: 130)
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help, --version
            let message = fullMessage(for: error)
            var line = message.split(separator: "\n").first.map(String.init) ?? "\(error)"
            if !(error is MSGenError) && message.contains("Usage:") {
                line += " (see 'msgen \(subcommandName(args)) --help')"
            }
            fputs(line + "\n", stderr)
            Foundation.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }

    static var subcommandNames: [String] { configuration.subcommands.map { $0._commandName } }

    /// The subcommand these arguments run (the default one when the first names none).
    static func subcommandName(_ args: [String]) -> String {
        args.first.flatMap { subcommandNames.contains($0) ? $0 : nil } ?? Generate._commandName
    }

    /// The subcommand `word` is within two edits of, when it is a lone lowercase word that
    /// names none: most likely a typo, which would otherwise become a prompt.
    static func misspelledSubcommand(_ word: String) -> String? {
        guard !subcommandNames.contains(word), word != "help", word.allSatisfy({ $0.isASCII && $0.isLowercase }) else { return nil }
        let ranked = subcommandNames.map { (name: $0, distance: editDistance(word, $0)) }.min { $0.distance < $1.distance }
        return ranked.flatMap { $0.distance <= 2 ? $0.name : nil }
    }
}

/// Levenshtein distance: insertions, deletions and substitutions of one character.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    guard !a.isEmpty else { return b.count }
    var row = Array(0...b.count)  // distances from a[..<i] to each prefix of b
    for i in 1...a.count {
        var previous = row[0]
        row[0] = i
        for j in stride(from: 1, through: b.count, by: 1) {
            let diagonal = previous
            previous = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
    }
    return row[b.count]
}
