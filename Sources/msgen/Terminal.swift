#if canImport(Glibc)
    import Glibc
#endif

/// Writing to the terminal: diagnostics on stderr, progress only when stderr is a terminal.
enum Terminal {
    static let stderrIsTTY = isatty(2) == 1

    static func note(_ line: String) {
        fputs(line + "\n", stderr)
    }

    /// A one-line progress bar, redrawn in place: "label [=====     ] 12/40".
    static func progress(_ label: String, _ done: Int, _ total: Int) {
        guard stderrIsTTY, total > 0 else { return }
        let width = 30, filled = width * done / total
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        fputs("\r\(label) [\(bar)] \(done)/\(total)", stderr)
        if done == total { fputs("\n", stderr) }
    }
}

/// Bytes as a short human string (1.5 MB).
func humanBytes(_ n: Int) -> String {
    let units = ["B", "KB", "MB", "GB"]
    var v = Double(n), u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}
