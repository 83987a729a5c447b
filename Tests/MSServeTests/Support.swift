import Foundation
import MSFormat
import MSGen
import MSGenTestSupport
import MSModels
import MSTokenizer
import Synchronization

@testable import MSServe

#if canImport(Glibc)
    import Glibc
#endif

let baselineFixture = "transformer_untied_gelutanh"

/// A server engine over a fixture model.
func fixtureEngine(_ name: String = "cst_a3_shared_untied_gelutanh_full", configure: (inout ServeOptions) -> Void = { _ in }) throws -> Engine {
    var o = ServeOptions()
    o.port = 0
    configure(&o)
    return Engine(generator: try fixtureGenerator(name), modelName: "fixture", options: o)
}

func json(_ data: Data) throws -> [String: Any] {
    guard let o = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw TestFailure("not a JSON object: \(String(decoding: data, as: UTF8.self))")
    }
    return o
}

func jsonBody(_ object: [String: Any]) -> Data { try! JSONSerialization.data(withJSONObject: object) }

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The `data:` payloads of an SSE body, in order.
func sseEvents(_ body: Data) -> [String] {
    String(decoding: body, as: UTF8.self).components(separatedBy: "\n\n").compactMap { block in
        block.hasPrefix("data: ") ? String(block.dropFirst(6)) : nil
    }
}

/// The text of a stream's chunks (completions or chat), checking each chunk parses.
func streamedText(_ body: Data) throws -> (text: String, finish: String?, chunks: [[String: Any]], done: Bool) {
    var text = "", finish: String?, chunks: [[String: Any]] = []
    let events = sseEvents(body)
    for e in events where e != "[DONE]" {
        let o = try json(Data(e.utf8))
        chunks.append(o)
        guard let choice = (o["choices"] as? [[String: Any]])?.first else { throw TestFailure("chunk without choices: \(e)") }
        if let t = choice["text"] as? String { text += t }
        if let t = (choice["delta"] as? [String: Any])?["content"] as? String { text += t }
        if let f = choice["finish_reason"] as? String { finish = f }
    }
    return (text, finish, chunks, events.last == "[DONE]")
}

/// A bare HTTP/1.1 client over a POSIX socket, for what a friendly client never does:
/// disconnect mid-stream, stop reading, send half a body. One request per connection.
final class RawHTTP {
    private(set) var fd: Int32

    init(port: Int, receiveBuffer: Int? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket failed") }
        // Reads give up after 20 s, so that a server that never answers fails a test instead of hanging it.
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if var size = receiveBuffer.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else { close(fd); throw TestFailure("connect failed") }
    }

    deinit { hangUp() }

    /// Closes the connection (once).
    func hangUp() {
        if fd >= 0 { close(fd); fd = -1 }
    }

    func send(_ bytes: Data) {
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Sends a request; `bodyBytes` may be fewer than the Content-Length (a body cut short).
    func request(_ method: String, _ path: String, body: Data = Data(), contentLength: Int? = nil, headers: [String: String] = [:]) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
        head += "Content-Length: \(contentLength ?? body.count)\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        send(Data((head + "\r\n").utf8) + body)
    }

    /// Whether the last `read` ended because the server closed the connection.
    private(set) var closedByPeer = false

    /// Reads whatever arrives until `until` holds for the bytes so far, or the peer closes.
    @discardableResult
    func read(until: (Data) -> Bool = { _ in false }) -> Data {
        var all = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        closedByPeer = false
        while !until(all) {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 { closedByPeer = true }
            if n <= 0 { break }
            all.append(contentsOf: buf[0..<n])
        }
        return all
    }

    /// The status and de-chunked body of a whole response (the server closes after it).
    func response() throws -> (status: Int, headers: String, body: Data) {
        try RawHTTP.parse(read())
    }

    static func parse(_ raw: Data) throws -> (status: Int, headers: String, body: Data) {
        guard let split = raw.range(of: Data("\r\n\r\n".utf8)) else { throw TestFailure("no response head in \(raw.count) bytes") }
        let head = String(decoding: raw[..<split.lowerBound], as: UTF8.self)
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? -1
        var body = Data(raw[split.upperBound...])
        if head.lowercased().contains("transfer-encoding: chunked") { body = dechunk(body) }
        return (status, head, body)
    }

    static func dechunk(_ d: Data) -> Data {
        var out = Data(), i = d.startIndex
        while let lineEnd = d[i...].range(of: Data("\r\n".utf8)) {
            let size = Int(String(decoding: d[i..<lineEnd.lowerBound], as: UTF8.self), radix: 16) ?? 0
            if size == 0 { break }
            let start = lineEnd.upperBound
            guard start + size <= d.endIndex else { out += d[start...]; break }
            out += d[start..<(start + size)]
            i = start + size + 2
            if i > d.endIndex { break }
        }
        return out
    }

    /// One whole request on a new connection.
    static func fetch(port: Int, _ method: String, _ path: String, body: Data = Data(), headers: [String: String] = [:]) throws
        -> (status: Int, headers: String, body: Data)
    {
        let c = try RawHTTP(port: port)
        c.request(method, path, body: body, headers: headers)
        return try c.response()
    }
}

/// A metric's value in Prometheus text (the first sample line with that name).
func metric(_ text: String, _ name: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
        return Double(line.split(separator: " ").last ?? "")
    }
    return nil
}

/// Runs blocking socket work on a thread of its own: the live server's handlers run on
/// Swift's cooperative pool (as many threads as cores), which blocked test code would starve.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        Thread { c.resume(with: Result { try body() }) }.start()
    }
}

/// Runs `body(i)` for i in 0..<n, each on its own thread, and returns the results in order.
func onThreads<T: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) throws -> T) throws -> [T] {
    let results = Mutex<[Int: Result<T, Error>]>([:])
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        Thread {
            let r = Result { try body(i) }
            results.withLock { $0[i] = r }
            group.leave()
        }.start()
    }
    group.wait()
    return try results.withLock { all in try (0..<n).map { try all[$0]!.get() } }
}
