import ArgumentParser
import MSFormat

@main
struct MSGenCommand: ParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "msgen",
        abstract: "Run multi-scale transformer language models (CST, MS-Trans) on the CPU.",
        version: version,
        subcommands: [Convert.self, Inspect.self]
    )
}
