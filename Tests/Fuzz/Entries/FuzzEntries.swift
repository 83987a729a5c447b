import Foundation
import MSFormat
import MSModels
import MSServeRequests
import MSTokenizer
import ZIPFoundation

/// One fuzz target per parser entry point (Tests/Fuzz/README.md). `run` is what libFuzzer
/// calls with each input (Tests/Fuzz/Targets) and what `FuzzRegressionTests` replays on
/// every committed crash input: a parser may accept an input or throw `MSGenError`; any
/// other outcome (a trap, a hang, another error type, a broken invariant) is a bug.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case msz, safetensors, torch, tokenizer, config, bpe, detok, http

    /// Runs one input. Returns normally when the parser accepted it or refused it with a
    /// clear error; traps (so that libFuzzer reports it) on anything else.
    public func run(_ data: [UInt8]) {
        do {
            switch self {
            case .msz: try Self.msz(data)
            case .safetensors: _ = try Safetensors.read(path: Self.write(data, as: "safetensors"))
            case .torch: try Self.torch(data)
            case .tokenizer: _ = try BPETokenizer(json: String(decoding: data, as: UTF8.self))
            case .config: try Self.config(data)
            case .bpe: Self.bpe(data)
            case .detok: Self.detok(data)
            case .http: try Self.http(data)
            }
        } catch is MSGenError {
            // A clear refusal: what a damaged or hostile file should get.
        } catch let e as APIError {
            // msgen serve's refusal of a body: a 400 naming what is wrong.
            precondition(e.status == 400 && !e.message.isEmpty, "a body refused with \(e.status): \(e.message)")
        } catch {
            fatalError("\(self) threw \(type(of: error)), not MSGenError: \(error)")
        }
    }

    // MARK: The targets

    /// The header and every frame, decompressed (checksums, byte planes).
    static func msz(_ data: [UInt8]) throws {
        let file = try MSZFile(path: write(data, as: "msz"))
        _ = try file.load()
    }

    /// A PyTorch checkpoint. The first byte picks how the rest is used: 0 = a whole zip
    /// file as `torch.save` writes it; anything else = the bytes of data.pkl, wrapped
    /// here in a well-formed zip (with CRCs) so that mutations reach the unpickler
    /// instead of failing the zip's checksums.
    static func torch(_ data: [UInt8]) throws {
        guard let mode = data.first else { return }
        let rest = Data(data.dropFirst())
        let path: String
        if mode == 0 { path = write(Array(rest), as: "pt") } else { path = try wrapPickle(rest) }
        _ = try TorchCheckpoint.read(path: path)
    }

    /// config.json validation: the shared reader and every registered architecture's own
    /// keys, with no tensors (each architecture must refuse, naming the missing tensors,
    /// or fail on a key first), and its one-line description.
    static func config(_ data: [UInt8]) throws {
        let json = try JSONValue.parse(Data(data), what: "config.json")
        guard case .object(var object) = json else { _ = try ConfigReader(json); return }
        for a in Architectures.all {
            object["architecture"] = .string(a.name)
            let reader = try ConfigReader(.object(object))
            do { _ = try a.describe(reader) } catch is MSGenError {}
            do { _ = try Architectures.load(config: .object(object), tensors: [:]) } catch is MSGenError {}
        }
    }

    /// The encoder on arbitrary text. Byte-level BPE covers every byte and the fixture has
    /// no normalizer or prefix space, so decoding the ids gives the text back exactly.
    static func bpe(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        let ids = fixtureTokenizer.encode(text)
        precondition(ids.allSatisfy { $0 >= 0 && $0 < fixtureTokenizer.vocabSize }, "an id outside the vocabulary")
        precondition(fixtureTokenizer.decode(ids) == Array(text.utf8), "decode(encode(text)) is not the text")
    }

    /// The streaming detokenizer on arbitrary ids (3 bytes each, some out of range), with
    /// and without skipping special tokens: the pieces must join to the batch decoding.
    static func detok(_ data: [UInt8]) {
        guard let flags = data.first else { return }
        let skip = flags & 1 == 1
        var ids: [Int] = []
        var i = 1
        while i + 3 <= data.count {
            ids.append(Int(data[i]) | Int(data[i + 1]) << 8 | Int(data[i + 2]) << 16 - 0x10_0000)
            i += 3
        }
        var stream = StreamingDetokenizer(fixtureTokenizer, skipSpecial: skip)
        var text = ""
        for id in ids { text += stream.push(id) }
        text += stream.finish()
        let whole = String(decoding: fixtureTokenizer.decode(ids, skipSpecial: skip), as: UTF8.self)
        precondition(text == whole, "the streamed text differs from the whole decoding")
    }

    /// A request body of `msgen serve`, through the functions its handlers call. Byte 0
    /// picks the route (mod 4: /v1/completions, /v1/chat/completions, /tokenize,
    /// /detokenize), the rest is the body. A body accepted must hold options in range.
    static func http(_ data: [UInt8]) throws {
        guard let route = data.first else { return }
        let body = Data(data.dropFirst())
        let limits = RequestLimits(modelName: "fuzz", maxTokensLimit: 1 << 20, vocabSize: 50257)
        switch route % 4 {
        case 0, 1:
            let g = try route % 4 == 0 ? ServeRequests.completion(body, limits: limits) : ServeRequests.chat(body, limits: limits)
            let o = g.options, s = o.sampler
            precondition(!g.prompt.isEmpty && o.maxTokens >= 0 && o.maxTokens <= limits.maxTokensLimit && o.stop.count <= 16, "accepted out of range")
            precondition(o.logprobs.map { (0...20).contains($0) } ?? true, "accepted logprobs out of range")
            precondition(s.temperature >= 0 && s.temperature.isFinite && s.topK >= 0 && s.topP > 0 && s.topP <= 1, "accepted a sampler out of range")
            precondition(s.minP >= 0 && s.minP <= 1 && s.repeatPenalty > 0 && s.repeatPenalty.isFinite, "accepted a sampler out of range")
        case 2: _ = try ServeRequests.tokenize(body)
        default:
            let r = try ServeRequests.detokenize(body, limits: limits)
            precondition(r.tokens.allSatisfy { $0 >= 0 && $0 < limits.vocabSize }, "accepted an id outside the vocabulary")
        }
    }

    // MARK: Helpers

    /// The GPT-2 tokenizer of the test fixtures (its full vocabulary and merges).
    static let fixtureTokenizer: BPETokenizer = {
        let path = fixtures + "/tokenizer/tokenizer.json"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let t = try? BPETokenizer(json: text) else {
            fatalError("cannot read the fixture tokenizer \(path)")
        }
        return t
    }()

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path

    /// The readers take paths: each input goes through one file per process and target.
    static func write(_ data: [UInt8], as ext: String) -> String {
        let path = scratch + "/input." + ext
        // POSIX calls: Foundation's createFile writes through a temporary file and a
        // rename, several times slower per input.
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0, data.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == data.count else {
            fatalError("cannot write \(path)")
        }
        close(fd)
        return path
    }

    static let scratch: String = {
        let dir = NSTemporaryDirectory() + "/msgen-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }()

    /// A zip as torch.save lays it out, holding `pickle` as data.pkl and four small
    /// storages (keys 0-3, 16 bytes each) that the pickle may reference.
    static func wrapPickle(_ pickle: Data) throws -> String {
        let path = scratch + "/wrapped.pt"
        try? FileManager.default.removeItem(atPath: path)
        let archive: Archive
        do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .create) } catch { fatalError("cannot create \(path)") }
        var entries = [("archive/byteorder", Data("little".utf8)), ("archive/data.pkl", pickle)]
        for k in 0..<4 { entries.append(("archive/data/\(k)", Data(repeating: UInt8(k), count: 16))) }
        for (name, bytes) in entries {
            do {
                try archive.addEntry(with: name, type: .file, uncompressedSize: Int64(bytes.count), compressionMethod: .none) { pos, size in
                    bytes.subdata(in: Int(pos)..<(Int(pos) + size))
                }
            } catch { fatalError("cannot write \(name) into \(path): \(error)") }
        }
        return path
    }
}
