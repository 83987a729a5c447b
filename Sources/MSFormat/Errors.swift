/// The one error type msgen reports: a sentence for the user, printed as one line on stderr.
public struct MSGenError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Throws `MSGenError(message())` unless `condition` holds.
@inline(__always)
public func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw MSGenError(message()) }
}

/// Multiplies shape dimensions, failing (instead of trapping) on negative sizes or overflow.
public func elementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

public func shapeString(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
