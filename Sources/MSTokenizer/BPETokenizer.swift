import MSFormat

/// A byte-level BPE tokenizer (GPT-2 style) read from a Hugging Face tokenizer.json,
/// giving exactly the ids of the `tokenizers` library (0.23):
///
///   1. added tokens ("<|endoftext|>", …) are cut out of the raw text first;
///   2. each remaining stretch is split by the GPT-2 pattern (ByteLevel pre-tokenizer);
///   3. each piece's UTF-8 bytes start as one symbol per byte and are merged pairwise,
///      lowest merge rank first, until no rule applies.
///
/// Tokens are never keyed by Swift `String` (whose equality is canonical equivalence):
/// vocabulary strings are keyed by their UTF-8, and encoding itself works on byte ids.
public struct BPETokenizer: Sendable {
    /// One more than the largest token id: the number of embedding rows a model needs.
    public let vocabSize: Int
    /// Added tokens marked special: they decode to nothing when asked to skip them.
    public let specialTokenIds: Set<Int>
    /// The id of "<|endoftext|>", when the vocabulary has it.
    public let eosTokenId: Int?

    private let idOfToken: [[UInt8]: Int]
    private let tokens: [String?]
    private let bytesOfToken: [[UInt8]]
    private let isSpecial: [Bool]
    private let idOfByte: [Int32]
    private let fallbackIdOfByte: [Int32]
    private let merges: MergeTable
    private let unkId: Int32?
    private let fuseUnk: Bool
    private let idOfWord: [[UInt8]: Int32]?
    private let addPrefixSpace: Bool
    private let useRegex: Bool
    private let rawAdded: AddedTokenSet
    private let normalizedAdded: AddedTokenSet

    /// Ids past this are a damaged file, not a vocabulary (the largest real ones are ~10⁶),
    /// and would make the per-id tables enormous.
    static let maxTokenId = 1 << 24
    /// Merge rules past this are a damaged file too (ranks are 32-bit; real lists hold
    /// ~10⁵), refused before the merge table is sized for them.
    static let maxMerges = 1 << 24

    public init(json: String) throws {
        let maxTokenId = Self.maxTokenId
        let root = try RawJSON.parse(json)
        guard root.members != nil, let model = root["model"], model.members != nil else {
            throw MSGenError("tokenizer.json has no \"model\" object; it is not a Hugging Face tokenizer file")
        }
        let modelType = model["type"]?.string ?? (model["merges"] != nil ? "BPE" : "untyped")
        guard modelType == "BPE" else { throw unsupported("a \(modelType) model") }
        let pre = try component(root, "pre_tokenizer", "pre-tokenizer", allowed: "ByteLevel", optional: false)
        _ = try component(root, "decoder", "decoder", allowed: "ByteLevel", optional: false)
        _ = try component(root, "post_processor", "post-processor", allowed: "ByteLevel", optional: true)
        _ = try component(root, "normalizer", "normalizer", allowed: nil, optional: true)
        // truncation and padding are length policies for batches, not tokenization: ignored.

        addPrefixSpace = pre?["add_prefix_space"]?.bool ?? true
        useRegex = pre?["use_regex"]?.bool ?? true

        if let dropout = model["dropout"], !dropout.isNull, dropout.int != 0 {
            throw unsupported("BPE dropout (random merges)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], !v.isNull, v.string != "" { throw unsupported("a BPE \(key)") }
        }

        // The model's vocabulary, keyed by each string's exact UTF-8.
        guard let vocabMembers = model["vocab"]?.members else { throw MSGenError("tokenizer.json has no model.vocab object") }
        try check(
            vocabMembers.count <= maxTokenId,
            "tokenizer.json: the vocabulary has \(vocabMembers.count) entries, more than the \(maxTokenId) msgen reads")
        var vocab: [[UInt8]: Int] = [:]
        vocab.reserveCapacity(vocabMembers.count)
        var maxId = -1
        for (token, value) in vocabMembers {
            guard let id = value.int, id >= 0, id < maxTokenId else {
                throw MSGenError("tokenizer.json: vocabulary entry \(debugQuoted(token)) has no valid id")
            }
            vocab[Array(token.utf8)] = id
            maxId = max(maxId, id)
        }

        var added: [AddedToken] = []
        for entry in root["added_tokens"]?.array ?? [] {
            guard let content = entry["content"]?.string else {
                throw MSGenError("tokenizer.json: an added token has no content")
            }
            let bytes = Array(content.utf8)
            if bytes.isEmpty { continue }  // the reference ignores empty added tokens
            // The reference gives an added token the model's id when the model has it.
            guard let id = vocab[bytes] ?? entry["id"]?.int, id >= 0, id < maxTokenId else {
                throw MSGenError("tokenizer.json: added token \(debugQuoted(content)) has no valid id")
            }
            let special = entry["special"]?.bool ?? false
            added.append(
                AddedToken(
                    content: bytes, id: id, special: special,
                    singleWord: entry["single_word"]?.bool ?? false,
                    lstrip: entry["lstrip"]?.bool ?? false, rstrip: entry["rstrip"]?.bool ?? false,
                    normalized: entry["normalized"]?.bool ?? !special, string: content))
            maxId = max(maxId, id)
        }

        vocabSize = maxId + 1
        var tokens = [String?](repeating: nil, count: vocabSize)
        for (token, value) in vocabMembers { tokens[value.int!] = token }
        var idOfToken = vocab
        var isSpecial = [Bool](repeating: false, count: vocabSize)
        for t in added {
            tokens[t.id] = t.string
            idOfToken[t.content] = t.id
            isSpecial[t.id] = t.special
        }
        self.tokens = tokens
        self.idOfToken = idOfToken
        self.isSpecial = isSpecial
        bytesOfToken = tokens.map { $0.map(ByteLevel.bytes(of:)) ?? [] }
        specialTokenIds = Set(added.filter(\.special).map(\.id))
        eosTokenId = idOfToken[Array("<|endoftext|>".utf8)]
        rawAdded = AddedTokenSet(added.filter { !$0.normalized })
        normalizedAdded = AddedTokenSet(added.filter(\.normalized))

        idOfByte = (0..<256).map { b in Int32(vocab[Array(String(ByteLevel.scalarOfByte[b]).utf8)] ?? -1) }
        let byteFallback = model["byte_fallback"]?.bool ?? false
        fallbackIdOfByte = (0..<256).map { b in
            guard byteFallback else { return -1 }
            let hex = String(b, radix: 16, uppercase: true)
            return Int32(vocab[Array("<0x\(b < 16 ? "0" : "")\(hex)>".utf8)] ?? -1)
        }
        if let unk = model["unk_token"]?.string {
            guard let id = vocab[Array(unk.utf8)] else {
                throw MSGenError("tokenizer.json: the unk_token \(debugQuoted(unk)) is not in the vocabulary")
            }
            unkId = Int32(id)
        } else {
            unkId = nil
        }
        fuseUnk = model["fuse_unk"]?.bool ?? false
        if model["ignore_merges"]?.bool ?? false {
            // Pieces found whole in the vocabulary skip merging. Pieces are byte-level
            // strings, so only tokens made of the byte alphabet can match.
            var words: [[UInt8]: Int32] = [:]
            for (token, value) in vocabMembers where ByteLevel.isByteLevel(token) {
                words[ByteLevel.bytes(of: token)] = Int32(value.int!)
            }
            idOfWord = words
        } else {
            idOfWord = nil
        }

        guard let mergeList = model["merges"]?.array else { throw MSGenError("tokenizer.json has no model.merges list") }
        try check(
            mergeList.count <= Self.maxMerges,
            "tokenizer.json: model.merges has \(mergeList.count) rules, more than the \(Self.maxMerges) msgen reads")
        var merges = MergeTable(capacity: mergeList.count)
        var rank: UInt32 = 0
        for item in mergeList {
            // Either ["a", "b"] or, in older files, "a b" split at the space (as bytes: a
            // Character split would glue a space to a following combining mark).
            let pair: [[UInt8]]
            if let line = item.string {
                if line.hasPrefix("#version") { continue }
                pair = line.utf8.split(separator: 0x20, omittingEmptySubsequences: false).map(Array.init)
            } else {
                pair = item.array?.compactMap { $0.string.map { Array($0.utf8) } } ?? []
            }
            guard pair.count == 2 else {
                throw MSGenError("tokenizer.json: merge rule \(rank + 1) is not a pair of tokens")
            }
            let (a, b) = (pair[0], pair[1])
            guard let left = vocab[a], let right = vocab[b], let joined = vocab[a + b] else {
                let names = pair.map { debugQuoted(String(decoding: $0, as: UTF8.self)) }.joined(separator: " + ")
                throw MSGenError("tokenizer.json: merge rule \(rank + 1) (\(names)) uses a token missing from the vocabulary")
            }
            merges.insert(Int32(left), Int32(right), .init(rank: rank, id: Int32(joined)))
            rank += 1
        }
        self.merges = merges
    }

    // MARK: Lookups

    /// The id of a vocabulary string as tokenizer.json writes it ("Ġthe", "<|endoftext|>").
    public func id(of token: String) -> Int? { idOfToken[Array(token.utf8)] }

    /// The vocabulary string of an id, as tokenizer.json writes it.
    public func token(_ id: Int) -> String? { tokens.indices.contains(id) ? tokens[id] : nil }

    /// The bytes an id stands for: a piece of UTF-8, possibly part of a character.
    public func tokenBytes(_ id: Int) -> [UInt8] { bytesOfToken.indices.contains(id) ? bytesOfToken[id] : [] }

    func isSpecialToken(_ id: Int) -> Bool { isSpecial.indices.contains(id) && isSpecial[id] }

    // MARK: Decoding

    /// The bytes of `ids` joined; ids without a token add nothing, as in the reference.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids where !(skipSpecial && isSpecialToken(id)) { out += tokenBytes(id) }
        return out
    }

    // MARK: Encoding

    /// The ids of `text`, as tokenizers' `encode(text).ids` gives them (no post-processor
    /// adds tokens: it is at most ByteLevel, which only adjusts offsets).
    public func encode(_ text: String) -> [Int] {
        var text = text
        return text.withUTF8 { u in
            var work = Workspace(textLength: u.count)
            for (id, range) in rawAdded.split(u, 0..<u.count) {
                if let id { work.ids.append(id); continue }
                for (id, range) in normalizedAdded.split(u, range) {
                    if let id { work.ids.append(id) } else { encodeStretch(u, range, &work) }
                }
            }
            return work.ids
        }
    }

    /// One stretch of text between added tokens: the ByteLevel pre-tokenizer, then BPE.
    private func encodeStretch(_ u: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ work: inout Workspace) {
        if range.isEmpty { return }
        if addPrefixSpace && u[range.lowerBound] != 0x20 {
            // The reference prepends the space to every stretch, not only the first.
            let spaced = [0x20] + Array(u[range])
            spaced.withUnsafeBufferPointer { encodeStretchAsIs($0, 0..<$0.count, &work) }
        } else {
            encodeStretchAsIs(u, range, &work)
        }
    }

    private func encodeStretchAsIs(_ u: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ work: inout Workspace) {
        if useRegex {
            forEachPreToken(u, in: range) { mergePiece(u, $0, &work) }
        } else {
            mergePiece(u, range, &work)
        }
    }

    /// BPE on one piece: one symbol per byte (per byte-level character, as merge_word
    /// builds them), then merged.
    private func mergePiece(_ u: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ work: inout Workspace) {
        let piece = UnsafeBufferPointer(rebasing: u[range])
        if let cached = work.cache?.ids(of: piece) {
            work.ids += cached
            return
        }
        let first = work.ids.count
        defer { work.cache?.insert(piece, ids: work.ids[first...]) }
        if let idOfWord, let id = idOfWord[Array(piece)] {
            work.ids.append(Int(id))
            return
        }
        work.symbols.removeAll(keepingCapacity: true)
        var pendingUnk = false
        for b in piece {
            let id = idOfByte[Int(b)]
            if id >= 0 {
                if pendingUnk { work.symbols.append(unkId!); pendingUnk = false }
                work.symbols.append(id)
            } else if fallbackIdOfByte[Int(b)] >= 0 {
                work.symbols.append(fallbackIdOfByte[Int(b)])
            } else if let unkId {
                if pendingUnk && !fuseUnk { work.symbols.append(unkId) }
                pendingUnk = true
            }
            // A byte with neither a token nor an unk token is dropped, as the reference does.
        }
        if pendingUnk { work.symbols.append(unkId!) }
        work.mergeSymbols(merges)
    }
}

/// Buffers reused across the pieces of one `encode` call.
private struct Workspace {
    var ids: [Int] = []
    var cache: PieceCache?
    var symbols: [Int32] = []
    var next: [Int32] = []
    var prev: [Int32] = []
    var heap = MergeHeap()

    init(textLength: Int) {
        // Only long texts repeat their words enough for a cache to pay for itself.
        if textLength >= 4096 { cache = PieceCache() }
    }

    /// Merges `symbols` and appends the result to `ids`, as tokenizers' Word::merge_all:
    /// a min-heap of (rank, position) over adjacent pairs; after each merge the two new
    /// neighbour pairs are queued, and entries whose pair has changed since they were
    /// queued are skipped when they surface.
    mutating func mergeSymbols(_ merges: MergeTable) {
        let n = symbols.count
        if n < 2 {
            for s in symbols { ids.append(Int(s)) }
            return
        }
        // Neighbours as a linked list over the initial positions (-1 ends it): a merged
        // symbol lives on at its left position and the right one is marked dead (-1).
        next.removeAll(keepingCapacity: true)
        prev.removeAll(keepingCapacity: true)
        heap.removeAll()
        for i in 0..<n {
            next.append(i + 1 < n ? Int32(i + 1) : -1)
            prev.append(Int32(i - 1))
        }
        for i in 0..<(n - 1) {
            if let m = merges.lookup(symbols[i], symbols[i + 1]) { heap.push(m.rank, i) }
        }
        while let (rank, pos) = heap.pop() {
            guard symbols[pos] >= 0, next[pos] >= 0 else { continue }
            let right = Int(next[pos])
            // A pair's rank identifies it, so a changed pair shows as a different rank.
            guard let m = merges.lookup(symbols[pos], symbols[right]), m.rank == rank else { continue }
            symbols[pos] = m.id
            symbols[right] = -1
            next[pos] = next[right]
            if next[pos] >= 0 { prev[Int(next[pos])] = Int32(pos) }
            if prev[pos] >= 0, let m = merges.lookup(symbols[Int(prev[pos])], symbols[pos]) {
                heap.push(m.rank, Int(prev[pos]))
            }
            if next[pos] >= 0, let m = merges.lookup(symbols[pos], symbols[Int(next[pos])]) {
                heap.push(m.rank, pos)
            }
        }
        var i = 0
        while i >= 0 {
            ids.append(Int(symbols[i]))
            i = Int(next[i])
        }
    }
}

/// The ids of pieces already merged during one `encode` call. Text repeats its words, and
/// a lookup costs far less than merging again.
private struct PieceCache {
    /// Longer pieces (runs of spaces or symbols) seldom repeat.
    private static let maxPieceLength = 64
    private static let maxEntries = 1 << 16
    private var entryOfHash: [UInt64: Int] = [:]
    private var entries: [(bytes: Range<Int>, ids: Range<Int>)] = []
    private var bytes: [UInt8] = []
    private var ids: [Int] = []

    private static func hash(_ piece: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for b in piece { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    func ids(of piece: UnsafeBufferPointer<UInt8>) -> ArraySlice<Int>? {
        guard piece.count <= Self.maxPieceLength, let e = entryOfHash[Self.hash(piece)],
            bytes[entries[e].bytes].elementsEqual(piece)
        else { return nil }
        return ids[entries[e].ids]
    }

    mutating func insert(_ piece: UnsafeBufferPointer<UInt8>, ids new: ArraySlice<Int>) {
        guard piece.count <= Self.maxPieceLength, entries.count < Self.maxEntries else { return }
        let h = Self.hash(piece)
        guard entryOfHash[h] == nil else { return }  // a collision: that piece stays uncached
        entryOfHash[h] = entries.count
        entries.append((bytes.count..<(bytes.count + piece.count), ids.count..<(ids.count + new.count)))
        bytes += piece
        ids += new
    }
}

/// A binary min-heap of (rank, position) packed into one integer, so that ties on rank
/// go to the leftmost pair, as in the reference.
private struct MergeHeap {
    private var items: [UInt64] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ rank: UInt32, _ pos: Int) {
        items.append(UInt64(rank) << 32 | UInt64(pos))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent] <= items[i] { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> (rank: UInt32, pos: Int)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && items[l] < items[m] { m = l }
                if r < items.count && items[r] < items[m] { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return (UInt32(top >> 32), Int(top & 0xFFFF_FFFF))
    }
}

// MARK: - tokenizer.json checks

private func unsupported(_ what: String) -> MSGenError {
    MSGenError(
        "tokenizer.json has \(what); msgen supports only byte-level BPE tokenizers (model type \"BPE\" with a ByteLevel pre-tokenizer and decoder, no normalizer), like GPT-2's"
    )
}

/// The component `key` of the root object, checked to be of the `allowed` type, or
/// absent when optional (an empty "Sequence" counts as absent).
private func component(
    _ root: RawJSON, _ key: String, _ name: String, allowed: String?,
    optional: Bool
) throws -> RawJSON? {
    guard let value = root[key], !value.isNull else {
        if optional { return nil }
        throw unsupported("no \(name)")
    }
    let type = value["type"]?.string ?? "untyped"
    if type == allowed { return value }
    let isEmptySequence = type == "Sequence" && !(value.members ?? []).contains { $0.value.array?.isEmpty == false }
    if optional && isEmptySequence { return nil }
    throw unsupported("a \(type) \(name)")
}

private func debugQuoted(_ s: String) -> String { s.debugDescription }
